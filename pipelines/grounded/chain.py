"""One batch of photos through the whole chain: read, tag, ground, segment, gate, inpaint, verify, pair.

Every model call covers the whole batch at once (the tagger's and detector's over its photos, SAM over
their boxes, LaMa over every kept mask, the verifier over every result), and every object a gate stops
is a drop with its reason, its phrase and what was measured. With ``sessions`` the kept objects of a
photo are removed one after another instead (:mod:`ieiw.pipelines.grounded.sessions`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ieiw.pipelines.grounded.config import GateConfig, GroundedRemovalConfig
from ieiw.pipelines.grounded.gates import (
    Failed,
    MaskMeasures,
    instance_gate,
    mask_gate,
    measure,
    overlap,
    overlap_gate,
    verify_gate,
)
from ieiw.pipelines.grounded.grounding import Grounded, ground
from ieiw.pipelines.grounded.pairs import GENERATOR, Removal, generator_info, region_provenance, removal_pairs
from ieiw.pipelines.grounded.photos import Photo, load_photo
from ieiw.pipelines.grounded.tagging import Tag
from ieiw.pipelines.grounded.wording import Wording
from ieiw.pipelines.inpaint.base import Inpainter, InpaintError
from ieiw.pipelines.removal import inpaint_batch, mask_change
from ieiw.pipelines.sources.drops import keyed_drop
from ieiw.pipelines.sources.phrasecut import dilate
from ieiw.quality.verifier import ObjectVerifier, VerifierConfig, VerifyItem
from ieiw.storage.config import WorkerEnv
from ieiw.storage.schema import Drop, Result, Task, stable_key

NO_TAGS = "no_tags"


@dataclass
class Candidate:
    """A grounded tag with its SAM mask (the union of its instances' masks), past the mask gates."""

    photo: Photo
    index: int  # of its image in the batch
    found: Grounded
    mask: np.ndarray  # HxW bool, before dilation
    measures: MaskMeasures

    @property
    def phrase(self) -> str:
        return self.found.tag.phrase

    def details(self) -> dict[str, Any]:
        return {
            "tag_probability": self.found.tag.probability,
            "detector_score": round(float(self.found.scores[0]), 4),
            "boxes": [[round(float(v), 1) for v in box] for box in self.found.boxes],
            "area_fraction": round(self.measures.area, 5),
            "inside_box": round(self.measures.inside, 4),
        }


def object_drop(
    photo: Photo, phrase: str, count: int, failed: Failed, scores: Mapping[str, float] | None = None
) -> Drop:
    """The drop of one object of a photo, keyed by the photo, the phrase and the reason."""
    return Drop(
        key=stable_key(GENERATOR, photo.record_id, phrase, failed.reason),
        reason=failed.reason,
        detail=failed.detail,
        record_id=photo.record_id,
        task=str(Task.REMOVE),
        provenance=region_provenance(photo, phrase, max(1, count)),
        scores=dict(scores or {}),
    )


def grounded_removal(
    photos: Sequence[Photo], models: Mapping[str, Any], config: GroundedRemovalConfig
) -> list[Result]:
    """A batch of photos into remove (and add) pairs and drops (models by role: ``tagger``, ``detector``,
    ``segmenter``, ``inpainter``, ``verifier``)."""
    results: list[Result] = []
    kept_photos: list[Photo] = []
    images: list[np.ndarray] = []
    for photo in photos:
        image = load_photo(photo, config.source)
        if isinstance(image, Drop):
            results.append(image)
        else:
            kept_photos.append(photo)
            images.append(image)
    tags = models["tagger"].tag(images)
    for photo, found in zip(kept_photos, tags, strict=True):
        if not found:
            detail = f"no name of the vocabulary at least {config.tagger.min_probability} likely"
            results.append(keyed_drop(GENERATOR, photo.record_id, NO_TAGS, detail, photo.provenance))
    candidates = segment_candidates(kept_photos, images, tags, models, config, results)
    kept = [without_overlaps(group, config, results) for group in candidates]
    if config.sessions is None:
        results += inpaint_and_verify([c for group in kept for c in group], images, models, config)
    else:
        from ieiw.pipelines.grounded.sessions import session_removal  # it builds on this module

        results += session_removal(kept, images, models, config)
    return results


def segment_candidates(
    photos: list[Photo],
    images: list[np.ndarray],
    tags: list[list[Tag]],
    models: Mapping[str, Any],
    config: GroundedRemovalConfig,
    results: list[Result],
) -> list[list[Candidate]]:
    """Per photo, its tags that pass the detector's and the mask gates (drops appended to ``results``)."""
    gates = config.gates
    detector = models["detector"].detector(
        VerifierConfig(
            model=config.detector.model,
            query_template=config.detector.query_template,
            batch_size=config.detector.batch_size,
        )
    )
    grounded = ground(detector, images, tags, config.tagger.top_k, gates.min_score, gates.nms_iou)
    pending: list[tuple[int, Grounded]] = []
    for i, found_all in enumerate(grounded):
        for found in found_all:
            failed = instance_gate(found, gates)
            if failed is not None:
                scores = {"detector_score": found.best_score}
                results.append(object_drop(photos[i], found.tag.phrase, len(found.boxes), failed, scores))
            else:
                pending.append((i, found))
    boxes = [np.zeros((0, 4), np.float32) for _ in images]
    for i, found in pending:
        boxes[i] = np.concatenate([boxes[i], found.boxes])
    masks = models["segmenter"].segment(images, boxes)
    used = [0] * len(images)
    out: list[list[Candidate]] = [[] for _ in images]
    for i, found in pending:
        count = len(found.boxes)
        mask = np.logical_or.reduce(masks[i][used[i] : used[i] + count])
        used[i] += count
        measures = measure(mask, found.boxes, gates)
        failed = mask_gate(measures, gates)
        if failed is not None:
            scores = {"area_fraction": measures.area, "inside_box": measures.inside}
            results.append(object_drop(photos[i], found.tag.phrase, count, failed, scores))
        else:
            out[i].append(Candidate(photos[i], i, found, mask, measures))
    return out


def without_overlaps(
    candidates: list[Candidate], config: GroundedRemovalConfig, results: list[Result]
) -> list[Candidate]:
    """A photo's candidates, most confident first, less those sharing pixels with one kept before."""
    kept: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: -float(c.found.scores[0])):
        share = overlap(candidate.mask, [k.mask for k in kept])
        failed = overlap_gate(share, config.gates)
        if failed is not None:
            count = len(candidate.found.boxes)
            results.append(object_drop(candidate.photo, candidate.phrase, count, failed, {"overlap": share}))
        else:
            kept.append(candidate)
    return kept


def removal_mask(candidate: Candidate, dilation: int) -> np.ndarray:
    """The mask LaMa fills: the object's, grown by ``dilation`` pixels (HxW ``uint8``, 0 or 255)."""
    return dilate(candidate.mask.astype(np.uint8) * 255, dilation)


def wording_of(models: Mapping[str, Any], config: GroundedRemovalConfig) -> Wording:
    """How the pairs' instructions are written: the templates, or the LLM (``models["writer"]``)."""
    return Wording(config.instructions, models.get("writer") if config.uses_llm() else None)


@dataclass(frozen=True)
class Verified:
    """The verifier's scores of a removal, and the gate it failed (None: the object is gone)."""

    scores: dict[str, float]
    failed: Failed | None


def verify_removals(
    verifier: ObjectVerifier,
    removals: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    gates: GateConfig,
) -> list[Verified]:
    """Whether each removal ``(phrase, source, target, mask)`` took its object away (one verifier pass)."""
    items = [
        VerifyItem(str(n), str(Task.REMOVE), {"phrase": phrase}, source, target, mask)
        for n, (phrase, source, target, mask) in enumerate(removals)
    ]
    out = []
    for verdict in verifier.verify(items) if items else []:
        scores = {k: round(verdict.scores[k], 4) for k in ("verify_removed_src", "verify_removed_tgt")}
        failed = (
            Failed(verdict.error, "the verifier cannot check this pair")
            if verdict.error
            else verify_gate(scores["verify_removed_tgt"], gates)
        )
        out.append(Verified(scores, failed))
    return out


def inpaint_and_verify(
    candidates: list[Candidate],
    images: list[np.ndarray],
    models: Mapping[str, Any],
    config: GroundedRemovalConfig,
) -> list[Result]:
    """The kept objects inpainted away (dilated masks, one batch), checked by the verifier (one pass),
    and made into pairs."""
    inpainter: Inpainter = models["inpainter"]
    masks = [removal_mask(c, config.dilation) for c in candidates]
    sources = [images[c.index] for c in candidates]
    targets = inpaint_batch(inpainter, sources, masks)
    results: list[Result] = []
    removals: list[Removal] = []
    for candidate, source, target, mask in zip(candidates, sources, targets, masks, strict=True):
        count = len(candidate.found.boxes)
        if isinstance(target, InpaintError):
            results.append(
                object_drop(candidate.photo, candidate.phrase, count, Failed("inpaint_failed", str(target)))
            )
            continue
        change = mask_change(source, target, mask)
        if change < config.min_change:
            failed = Failed("inpaint_no_change", f"mean change {change:.3f} in the mask")
            results.append(object_drop(candidate.photo, candidate.phrase, count, failed))
            continue
        measures = {**candidate.details(), "mask_change": round(change, 3)}
        removals.append(Removal(candidate.photo, candidate.phrase, count, source, target, mask, measures))
    verifier = models["verifier"].detector(config.verifier)
    verdicts = verify_removals(
        verifier, [(r.phrase, r.source, r.target, r.mask) for r in removals], config.gates
    )
    generator = generator_info(config, inpainter, WorkerEnv.here())
    words = wording_of(models, config)
    for removal, verdict in zip(removals, verdicts, strict=True):
        if verdict.failed is not None:
            results.append(
                object_drop(removal.photo, removal.phrase, removal.count, verdict.failed, verdict.scores)
            )
            continue
        removal.measures.update(verdict.scores)
        results += removal_pairs(removal, generator, config.make_add_pairs, words)
    return results
