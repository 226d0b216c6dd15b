"""Tags grounded to boxes by an open-vocabulary detector through transformers (OWLv2, or Grounding DINO),
batched across images.

OWLv2 is the object verifier's (:class:`ieiw.quality.verifier.ObjectVerifier`): its ``detect`` runs every
forward pass at one fixed shape (``batch_size`` images with the same number of queries), so a photo's
boxes never depend on which photos shared its batch. Grounding DINO (:class:`DinoDetector`, any
``AutoModelForZeroShotObjectDetection`` checkpoint of model type ``grounding-dino`` or
``mm-grounding-dino``) is asked the same way: each photo's queries merged as it reads them ("red cup. dog.",
text padded to the model's ``max_text_len``), every image padded to one square of the processor's longest
edge, and a query's score for a box its best token's. Each photo is asked for its tags, padded to
``top_k`` queries; per tag, the boxes at least ``min_score`` confident are reduced by non-maximum
suppression to its instances, most confident first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ieiw.pipelines.grounded.tagging import Tag
from ieiw.quality.fixed_batches import padded_chunks
from ieiw.quality.verifier import ObjectVerifier, VerifierConfig
from ieiw.storage.identity import model_identity
from ieiw.storage.models import pretrained

OWL_FAMILY = ("owlv2", "owlvit")
DINO_FAMILY = ("grounding-dino", "mm-grounding-dino")
PAD_QUERY = " "  # what the processor pads with: a query of no words
MIN_QUERIES = 2  # the verifier asks two queries an image (the removed and the added object)


class Detector(Protocol):
    """What grounding asks of a detector (:class:`ObjectVerifier`'s ``detect``, :class:`DinoDetector`)."""

    config: VerifierConfig

    def detect(self, images: Sequence[np.ndarray], queries: Sequence[Sequence[str]]) -> list[dict]: ...


def _zero_shot(reference: str, device: str | None) -> tuple[Any, Any, str, str]:
    """A zero-shot detection checkpoint and its processor through ``from_pretrained`` (a hub id at its
    pinned commit or a local folder, :func:`ieiw.storage.models.pretrained`), on ``device``."""
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    name, options = pretrained(reference)
    where = device if device not in (None, "", "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForZeroShotObjectDetection.from_pretrained(name, **options)
    processor = AutoProcessor.from_pretrained(name, **options)
    return model.to(where).eval(), processor, where, model_identity(reference) or reference


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
    """An OWLv2 (or OWL-ViT) checkpoint: the verifier's, and the detector's with ``detector.kind: owlv2``."""
    model, processor, where, identity = _zero_shot(reference, device)
    if model.config.model_type not in OWL_FAMILY:
        raise ValueError(
            f"{reference}: a {model.config.model_type} model where OWLv2 or OWL-ViT is needed (the verifier "
            "reads OWL's per-query box scores; a Grounding DINO detector is detector.kind: grounding_dino)"
        )
    return OwlModel(model, processor, where, identity)


class DinoDetector:
    """Grounding DINO asked for each image's queries at one fixed shape (see the module docstring)."""

    def __init__(self, config: VerifierConfig, model: Any, processor: Any, device: str) -> None:
        self.config = config
        self.model = model
        self.processor = processor
        self.device = device
        size = processor.image_processor.size
        side = size.get("longest_edge") or max(size.get("height") or 0, size.get("width") or 0)
        self.pad_size = {"height": int(side), "width": int(side)}
        self.length = int(model.config.max_text_len)
        self._lock = threading.Lock()

    def merged(self, queries: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
        """The queries as one text ("red cup. dog."), and each one's token span in it (empty for a
        query of no words, or one cut by ``max_text_len``)."""
        tokenizer = self.processor.tokenizer
        labels: list[str] = []
        spans: list[tuple[int, int]] = []
        at = 1  # after [CLS]
        for query in queries:
            label = " ".join(query.lower().replace(".", " ").split())
            if not label:
                spans.append((0, 0))
                continue
            count = len(tokenizer(label, add_special_tokens=False)["input_ids"])
            spans.append((at, max(at, min(at + count, self.length - 1))))
            at += count + 1  # the label's tokens and its "."
            labels.append(label)
        return (". ".join(labels) + ".") if labels else ".", spans

    def detect(self, images: Sequence[np.ndarray], queries: Sequence[Sequence[str]]) -> list[dict]:
        """Per image: ``boxes`` (N x 4, centre x, centre y, width, height in the image's pixels) and
        ``scores`` (N x Q, each query's best token's confidence for each box)."""
        import torch

        out: list[dict] = []
        for chunk, real in padded_chunks(list(zip(images, queries, strict=True)), self.config.batch_size):
            texts, spans = zip(*(self.merged(q) for _, q in chunk), strict=True)
            inputs = self.processor(
                images=[np.require(image, requirements="W") for image, _ in chunk],
                text=list(texts),
                padding="max_length",
                max_length=self.length,
                truncation=True,
                pad_size=self.pad_size,
                return_tensors="pt",
            ).to(self.device)
            with self._lock, torch.inference_mode():
                output = self.model(**inputs)
            logits = output.logits.float().sigmoid().cpu().numpy()  # B x boxes x tokens
            boxes = output.pred_boxes.float().cpu().numpy()  # relative to each image, before padding
            for i, (image, _) in enumerate(chunk[:real]):
                height, width = image.shape[:2]
                scores = np.zeros((boxes.shape[1], len(spans[i])), np.float32)
                for q, (start, end) in enumerate(spans[i]):
                    if end > start:
                        scores[:, q] = logits[i, :, start:end].max(axis=1)
                out.append({"boxes": boxes[i] * [width, height, width, height], "scores": scores})
        return out


@dataclass
class DinoModel:
    """A Grounding DINO checkpoint and its processor on a device, loaded once per worker."""

    model: Any
    processor: Any
    device: str
    identity: str

    def detector(self, config: VerifierConfig) -> DinoDetector:
        return DinoDetector(config, self.model, self.processor, self.device)


def load_detector(kind: str, reference: str, device: str | None = None) -> OwlModel | DinoModel:
    """The grounding detector of ``detector.kind``: OWLv2 (:func:`load_owl`) or Grounding DINO."""
    if kind == "owlv2":
        return load_owl(reference, device)
    model, processor, where, identity = _zero_shot(reference, device)
    if model.config.model_type not in DINO_FAMILY:
        raise ValueError(
            f"detector {reference}: a {model.config.model_type} model, not Grounding DINO "
            f"(detector.kind: grounding_dino); an OWL checkpoint is detector.kind: owlv2"
        )
    return DinoModel(model, processor, where, identity)


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
    detector: Detector,
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
