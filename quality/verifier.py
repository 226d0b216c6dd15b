"""An open-vocabulary object verifier: is a removed object really gone, an added one really there?

AnyEdit checks its object edits with a detector; so does this. An OWLv2 detector from transformers
(``Owlv2ForObjectDetection`` with its processor, any checkpoint folder or hub id) looks for the
edited object, by its phrase, in the edited region (the pair's mask, its bounding box widened by
``region_margin``) of the source and of the target. Each pair names the object removed and the object
added (:func:`object_queries`):

- ``remove``: the phrase is removed (it must be found in the source, and not in the target);
- ``add``: the phrase is added (found in the target, not in the source);
- ``replace``: the original label is removed and the reference's label added (when the two differ).

The four scores are the detector's best confidence for a query among boxes centred in the region:
``verify_removed_src``, ``verify_removed_tgt``, ``verify_added_src``, ``verify_added_tgt`` (NaN where
a task has no such object). The filter policy bounds them per task, and the rule that fails names
the check: ``object_missing_in_source`` (``verify_removed_src_min``), ``object_still_present``
(``verify_removed_tgt_max``), ``object_already_present`` (``verify_added_src_max``) and
``object_missing_in_target`` (``verify_added_tgt_min``). A pair the verifier cannot check (a task
it does not know, no phrase, no mask) gets ``error`` set (``verify_no_query``, ``verify_no_mask``),
which becomes its drop reason where the policy asks for these scores.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ieiw.quality.fixed_batches import padded_chunks
from ieiw.storage.config import model_ref, operational
from ieiw.storage.models import pretrained

VERIFY_SCORES: tuple[str, ...] = (
    "verify_removed_src",
    "verify_removed_tgt",
    "verify_added_src",
    "verify_added_tgt",
)
NO_QUERY = "verify_no_query"
NO_MASK = "verify_no_mask"
CHECKED_TASKS = ("remove", "add", "replace")
QUERY_SLOTS = 2  # queries per image in a forward pass: the removed and the added object


class VerifierConfig(BaseModel):
    """The detector, how queries are worded and where the edited region ends."""

    model_config = ConfigDict(extra="forbid")

    model: str = model_ref("google/owlv2-base-patch16-ensemble")  # a local folder or hub id (OWLv2)
    query_template: str = "{}"  # e.g. "a photo of a {}"
    region_margin: float = Field(default=0.15, ge=0.0)  # of the mask's bounding box, on every side
    device: str | None = operational(None)
    batch_size: int = operational(16, ge=1)  # images per forward pass


@dataclass(frozen=True)
class ObjectQueries:
    removed: str | None = None
    added: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("removed", self.removed), ("added", self.added)) if v}


def _clean(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    text = " ".join(text.split()).strip()
    return text or None


def object_queries(task: str, extra: Mapping[str, Any]) -> ObjectQueries | None:
    """The objects a pair removes and adds, from its generator's ``extra``; None for tasks not checked."""
    task = str(task)
    if task == "remove":
        return ObjectQueries(removed=_clean(extra.get("phrase")))
    if task == "add":
        return ObjectQueries(added=_clean(extra.get("phrase")))
    if task == "replace":
        before, after = _clean(extra.get("source_object")), _clean(extra.get("target_object"))
        if after and after.startswith("different "):
            after = after.removeprefix("different ")
        return ObjectQueries(removed=before if before != after else None, added=after)
    return None


@dataclass
class VerifyItem:
    """One pair to check: its images (HxWx3 ``uint8``), mask (HxW, nonzero inside) and task details."""

    key: str
    task: str
    extra: Mapping[str, Any]
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray | None


@dataclass
class Verification:
    key: str
    scores: dict[str, float] = field(default_factory=lambda: dict.fromkeys(VERIFY_SCORES, math.nan))
    queries: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def region_box(mask: np.ndarray, margin: float) -> tuple[float, float, float, float] | None:
    """The mask's bounding box ``(x0, y0, x1, y1)`` in pixels, widened by ``margin`` of its size."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    x0, x1, y0, y1 = float(xs.min()), float(xs.max() + 1), float(ys.min()), float(ys.max() + 1)
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    return x0 - dx, y0 - dy, x1 + dx, y1 + dy


class ObjectVerifier:
    """The detector and its processor, loaded once per process; :meth:`verify` checks a batch."""

    def __init__(self, config: VerifierConfig, model: Any, processor: Any, device: str) -> None:
        self.config = config
        self.model = model
        self.processor = processor
        self.device = device
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: VerifierConfig) -> ObjectVerifier:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        name, options = pretrained(config.model)  # a hub id at its pinned commit, or a folder
        model = AutoModelForZeroShotObjectDetection.from_pretrained(name, **options).to(device).eval()
        return cls(config, model, AutoProcessor.from_pretrained(name, **options), device)

    def detect(self, images: Sequence[np.ndarray], queries: Sequence[Sequence[str]]) -> list[dict]:
        """Per image: ``boxes`` (N x 4, centre x, centre y, width, height in the image's pixels) and
        ``scores`` (N x Q, the confidence of each box for each of the image's queries)."""
        import torch

        out: list[dict] = []
        asked = [list(q) for q in queries]
        width = max([QUERY_SLOTS, *(len(q) for q in asked)])
        # One fixed shape per forward pass (see ieiw.quality.fixed_batches): ``batch_size`` images with
        # ``width`` queries each (padded with " ", as the processor pads), so a pair's detections do not
        # depend on which pairs were checked with it.
        pairs = [(image, q + [" "] * (width - len(q))) for image, q in zip(images, asked, strict=True)]
        for chunk, real in padded_chunks(pairs, self.config.batch_size):
            pixels = [np.require(image, requirements="W") for image, _ in chunk]  # writable for torch
            texts = [q for _, q in chunk]
            inputs = self.processor(text=texts, images=pixels, return_tensors="pt").to(self.device)
            with self._lock, torch.inference_mode():
                output = self.model(**inputs)
            logits = output.logits.float().sigmoid().cpu().numpy()
            boxes = output.pred_boxes.float().cpu().numpy()
            for i, image in enumerate(pixels[:real]):
                side = float(max(image.shape[:2]))  # OWLv2 pads to a square: boxes are relative to it
                n = len(asked[len(out)])
                out.append({"boxes": boxes[i] * side, "scores": logits[i, :, :n]})
        return out

    def verify(self, items: Sequence[VerifyItem]) -> list[Verification]:
        """The four scores of every pair (one detector pass over all their images)."""
        results = [Verification(item.key) for item in items]
        images: list[np.ndarray] = []
        texts: list[list[str]] = []
        plans: list[tuple[int, str, str, tuple]] = []  # (item, image side, which query, region)
        for n, item in enumerate(items):
            queries = object_queries(item.task, item.extra)
            if queries is None or not queries.as_dict():
                results[n].error = NO_QUERY
                continue
            results[n].queries = queries.as_dict()
            region = region_box(item.mask, self.config.region_margin) if item.mask is not None else None
            if region is None:
                results[n].error = NO_MASK
                continue
            wanted = list(queries.as_dict().items())
            words = [self.config.query_template.format(q) for _, q in wanted]
            for side, image in (("src", item.source), ("tgt", item.target)):
                images.append(image)
                texts.append(words)
                plans.append((n, side, ",".join(w for w, _ in wanted), region))
        detections = self.detect(images, texts) if images else []
        for (n, side, which, region), found in zip(plans, detections, strict=True):
            for q, name in enumerate(which.split(",")):
                results[n].scores[f"verify_{name}_{side}"] = region_score(found, q, region)
        return results


def region_score(found: dict, query: int, region: tuple[float, float, float, float]) -> float:
    """The best confidence for ``query`` among boxes whose centre lies in ``region`` (0 if none does)."""
    boxes, scores = found["boxes"], found["scores"][:, query]
    x0, y0, x1, y1 = region
    inside = (boxes[:, 0] >= x0) & (boxes[:, 0] <= x1) & (boxes[:, 1] >= y0) & (boxes[:, 1] <= y1)
    return float(scores[inside].max()) if inside.any() else 0.0
