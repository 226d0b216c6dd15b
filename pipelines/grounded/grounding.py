"""Tags grounded to boxes by an open-vocabulary detector (OWLv2 through transformers), batched across images.

The detector is the object verifier's (:class:`ieiw.quality.verifier.ObjectVerifier`): its ``detect``
runs every forward pass at one fixed shape (``batch_size`` images with the same number of queries), so a
photo's boxes never depend on which photos shared its batch. Each photo is asked for its tags, padded
to ``top_k`` queries; per tag, the boxes at least ``min_score`` confident are reduced by non-maximum
suppression to its instances, most confident first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ieiw.pipelines.grounded.tagging import Tag
from ieiw.quality.verifier import ObjectVerifier, VerifierConfig
from ieiw.storage.identity import model_identity
from ieiw.storage.models import pretrained

OWL_FAMILY = ("owlv2", "owlvit")
PAD_QUERY = " "  # what the processor pads with: a query of no words
MIN_QUERIES = 2  # the verifier asks two queries an image (the removed and the added object)


@dataclass
class OwlModel:
    """An OWL detector and its processor on a device, loaded once per worker (the detector's and the
    verifier's, shared when they name the same model)."""

    model: Any
    processor: Any
    device: str
    identity: str

    def detector(self, config: VerifierConfig) -> ObjectVerifier:
        """The object verifier's detection and checks with this model, at ``config``'s settings."""
        return ObjectVerifier(config, self.model, self.processor, self.device)


def load_owl(reference: str, device: str | None = None) -> OwlModel:
    """An OWLv2 (or OWL-ViT) checkpoint through ``from_pretrained``: a hub id at its pinned commit or a
    local folder (:func:`ieiw.storage.models.pretrained`)."""
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    name, options = pretrained(reference)
    where = device if device not in (None, "", "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForZeroShotObjectDetection.from_pretrained(name, **options)
    if model.config.model_type not in OWL_FAMILY:
        raise ValueError(
            f"detector {reference}: a {model.config.model_type} model; the grounding and the verifier read "
            f"OWL's per-query box scores, so give an OWLv2 or OWL-ViT checkpoint"
        )
    processor = AutoProcessor.from_pretrained(name, **options)
    return OwlModel(model.to(where).eval(), processor, where, model_identity(reference) or reference)


@dataclass
class Grounded:
    """A tag found in a photo: its instances (boxes ``x0, y0, x1, y1`` in pixels, at least ``min_score``
    confident, after suppression, most confident first), or none with the best score seen."""

    tag: Tag
    best_score: float
    boxes: np.ndarray  # K x 4
    scores: np.ndarray  # K


def corner_boxes(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-size boxes (``cx, cy, w, h``) as corners clipped to the image."""
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return np.clip(corners, 0, [width, height, width, height]).astype(np.float32)


def suppress(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes non-maximum suppression keeps, most confident first (ties by index)."""
    import torch
    from torchvision.ops import nms

    if not len(boxes):
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    kept = nms(torch.from_numpy(boxes[order]).float(), torch.arange(len(order), 0, -1).float(), iou)
    return order[kept.numpy()]


def ground(
    detector: ObjectVerifier,
    images: Sequence[np.ndarray],
    tags: Sequence[Sequence[Tag]],
    slots: int,
    min_score: float,
    nms_iou: float,
) -> list[list[Grounded]]:
    """Each photo's tags grounded (one detector pass over the photos that have tags); ``slots``: the
    queries asked of every photo (its tags, padded), the same for every batch."""
    width = max(MIN_QUERIES, slots)
    asked = [i for i, found in enumerate(tags) if found]
    template = detector.config.query_template
    queries = [[template.format(t.phrase) for t in tags[i]][:width] for i in asked]
    queries = [q + [PAD_QUERY] * (width - len(q)) for q in queries]
    detections = detector.detect([images[i] for i in asked], queries) if asked else []
    out: list[list[Grounded]] = [[] for _ in images]
    for i, found in zip(asked, detections, strict=True):
        height, width_px = images[i].shape[:2]
        boxes = corner_boxes(found["boxes"], height, width_px)
        for q, tag in enumerate(tags[i][:width]):
            scores = found["scores"][:, q].astype(np.float32)
            best = float(scores.max()) if len(scores) else 0.0
            confident = np.flatnonzero(scores >= min_score)
            kept = confident[suppress(boxes[confident], scores[confident], nms_iou)]
            out[i].append(Grounded(tag, best, boxes[kept], scores[kept]))
    return out
