"""Replacement pairs from a batch of image records: the plain function the replacement stage runs.

stored regions -> FAISS reference -> paint -> captions -> instruction -> sample.

The object database already holds every image's selected regions (their masks as RLE, boxes, labels
and CLIP vectors, best first): the pairs take them from there instead of running SAM and CLIP again,
so the dominant GPU cost of the generator is paid once, by the database. Models come loaded in
:class:`PairModels` (once per worker process, by the runner: :mod:`.stage`).

A sample's key hashes its provenance (the region and its reference) and :class:`SampleSettings`: every
setting and model identity that shaped it, read from the config by the one fingerprint rule
(:func:`ieiw.storage.config.config_fingerprint`), so keys are the same on every machine and path and
change when a setting that shapes a sample does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import UnidentifiedImageError

from ieiw.pipelines.instructions.llm import InstructionWriter
from ieiw.pipelines.replacement.captions import BlipCaptioner, class_name_caption
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.crops import CropConfig, masked_crop
from ieiw.pipelines.replacement.database import ObjectDatabase, image_key, object_id
from ieiw.pipelines.replacement.index import ObjectIndex
from ieiw.pipelines.replacement.painting import Painted, Painter, PaintError, PaintJob, Refused
from ieiw.pipelines.replacement.records import (
    Region,
    RegionDecodeError,
    decode_rle,
    load_rgb,
    read_image,
    record_drop,
)
from ieiw.pipelines.replacement.retrieval import Match, retrieve
from ieiw.pipelines.replacement.selection import SelectedRegion
from ieiw.pipelines.replacement.sources import LoadedImage
from ieiw.pipelines.replacement.wording import write_instruction
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.schema import (
    Drop,
    GeneratorInfo,
    Provenance,
    Result,
    Sample,
    SampleMeta,
    Task,
    sample_key,
    stable_key,
)

GENERATOR = "replacement"
# Not in a sample's key: the provenance names its image (sources), only proposed regions depend on the
# proposer (they carry it as ``regions``), and how many regions of an image get pairs makes no pair
# other.
NOT_IN_KEYS = ("sources", "proposer", "regions_per_image")


@dataclass(frozen=True)
class StoredObjects:
    """The object database and its current index, opened once per worker process."""

    database: ObjectDatabase
    index: ObjectIndex


@dataclass(frozen=True)
class SampleSettings:
    """What shapes the samples, as their keys hold it: ``shared`` by every sample, ``proposer`` by the
    samples on regions a proposer made (those from annotations need none)."""

    shared: Mapping[str, Any]
    proposer: Mapping[str, Any]


@dataclass
class PairModels:
    """Everything :func:`make_pairs` runs, loaded once per worker. Neither CLIP nor SAM: the database
    ran them."""

    objects: StoredObjects
    painter: Painter
    settings: SampleSettings
    captioner: BlipCaptioner | None = None
    writer: InstructionWriter | None = None


def as_tree(fingerprint: Fingerprint) -> dict[str, Any]:
    """A fingerprint's settings with each model's identity in its place (``embedder.pretrained``)."""
    tree: dict[str, Any] = _copy(fingerprint.settings)
    for path, identity in fingerprint.models.items():
        node: Any = tree
        *parents, leaf = path.split(".")
        for name in parents:
            name, _, index = name.partition("[")
            node = node.setdefault(name, {})
            if index:
                node = node[int(index.rstrip("]"))]
        name, _, index = leaf.partition("[")
        if index:  # a list of models: their identities by position
            node.setdefault(name, {})[index.rstrip("]")] = identity
        else:
            node[leaf] = identity
    return tree


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def sample_settings(config: ReplacementConfig, env: WorkerEnv | None = None) -> SampleSettings:
    """The settings and model identities that shape a replacement sample, for workers of ``env`` (this
    process's by default: the precision a model computes in is its worker's)."""
    env = env or WorkerEnv.here()
    shared = config_fingerprint(GENERATOR, config, env, exclude=NOT_IN_KEYS)
    proposer = config_fingerprint(GENERATOR, config, env, include=("proposer",))
    return SampleSettings(as_tree(shared), as_tree(proposer)["proposer"])


@dataclass
class Candidate:
    loaded: LoadedImage
    region: SelectedRegion
    label: str | None = None
    label_source: str | None = None
    vector: np.ndarray | None = None

    @property
    def record_id(self) -> str:
        return self.loaded.record.record_id

    def drop(self, reason: str, detail: str) -> Drop:
        region_id = self.region.region.region_id
        return Drop(
            key=stable_key(GENERATOR, self.record_id, region_id, reason),
            reason=reason,
            detail=detail,
            record_id=self.record_id,
            task=str(Task.REPLACE),
            provenance=self.loaded.record.provenance(region_id),
        )


@dataclass
class Reference:
    row: dict
    match: Match
    image: np.ndarray
    mask: np.ndarray


def make_pairs(records: list, models: PairModels, config: ReplacementConfig) -> list[Result]:
    """Turn a batch of image records into replace samples, or drops with their reasons."""
    results: list[Result] = []
    candidates = _candidates(records, models.objects.database, config, results)
    if not candidates:
        return results
    queries = np.stack([c.vector for c in candidates])
    keys = [image_key(c.loaded.record.dataset, c.loaded.record.image_id) for c in candidates]
    labels = [c.label for c in candidates]
    matches = retrieve(models.objects.index, queries, keys, labels, config.retrieval)
    paired: list[tuple[Candidate, Reference]] = []
    for candidate, match in zip(candidates, matches, strict=True):
        if not isinstance(match, Match):
            results.append(candidate.drop("no_reference", match.detail))
            continue
        reference = _load_reference(models.objects.database, match, config.crop)
        if isinstance(reference, str):
            results.append(candidate.drop("reference_unreadable", reference))
            continue
        paired.append((candidate, reference))
    seeds = [_seed(c, config) for c, _ in paired]
    painted = _paint_all(models.painter, [_job(c, r, s) for (c, r), s in zip(paired, seeds, strict=True)])
    done: list[tuple[Candidate, Reference, Painted, int]] = []
    for (candidate, reference), result, seed in zip(paired, painted, seeds, strict=True):
        if isinstance(result, Refused):
            results.append(candidate.drop(result.reason, result.detail))
            continue
        if isinstance(result, str):
            results.append(candidate.drop("paint_failed", result))
            continue
        change = _change(candidate.loaded.image, result)
        if change < config.min_change:
            results.append(candidate.drop("paint_no_change", f"mean change {change:.3f} in the mask"))
            continue
        done.append((candidate, reference, result, seed))
    captions = _captions(done, models.captioner)
    for (candidate, reference, result, seed), (before, after) in zip(done, captions, strict=True):
        results.append(_sample(candidate, reference, result, seed, before, after, models, config))
    return results


def _candidates(
    records: list, database: ObjectDatabase, config: ReplacementConfig, results: list[Result]
) -> list[Candidate]:
    """Each record's best stored regions, with their masks, labels and vectors from the database."""
    candidates: list[Candidate] = []
    for record in records:
        image = read_image(record)
        if isinstance(image, Drop):
            results.append(image)
            continue
        rows = [database.row(r) | {"_row": r} for r in database.image_rows(record.dataset, record.image_id)]
        dropped = Counter(database.regions_dropped(record.dataset, record.image_id) or {})
        stored = rows[: config.regions_per_image]
        if not stored:
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items())) or "no regions"
            results.append(record_drop(record.record_id, "no_semantic_region", detail, record.provenance()))
            continue
        regions = [_stored_region(row) for row in stored]
        if any(r.mask.shape != image.shape[:2] for r in regions):
            detail = f"the database's masks do not fit {record.image_path} {image.shape[:2]}: rebuild it"
            results.append(record_drop(record.record_id, "database_mismatch", detail, record.provenance()))
            continue
        loaded = LoadedImage(record, image, regions, dropped)
        for region, row in zip(regions, stored, strict=True):
            vector = database.vector(row["_row"])
            candidates.append(Candidate(loaded, region, row["label"], row["label_source"], vector))
    return candidates


def _stored_region(row: dict) -> SelectedRegion:
    """A database row as the selected region it was made from."""
    mask = decode_rle({"size": [row["height"], row["width"]], "counts": row["rle_counts"]}).astype(bool)
    region = Region(
        region_id=row["region_id"],
        label=row["label"] if row["label_source"] == "annotation" else None,
        predicted_iou=row["predicted_iou"],
        stability_score=row["stability_score"],
    )
    return SelectedRegion(region, mask, tuple(int(v) for v in row["bbox"]), float(mask.mean()))


def _load_reference(database: ObjectDatabase, match: Match, crop: CropConfig) -> Reference | str:
    row = database.row(match.row)
    try:
        image = load_rgb(row["image_path"])
        mask = decode_rle({"size": [row["height"], row["width"]], "counts": row["rle_counts"]}).astype(bool)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, RegionDecodeError) as error:
        return f"{row['image_path']}: {error}"
    if mask.shape != image.shape[:2]:
        return f"{row['image_path']}: mask {mask.shape} does not fit image {image.shape[:2]}"
    crop_image = masked_crop(
        image, mask, tuple(row["bbox"]), crop.model_copy(update={"background_fade": 0.0})
    )
    return Reference(row, match, crop_image.image, crop_image.mask)


def _seed(candidate: Candidate, config: ReplacementConfig) -> int:
    key = stable_key(candidate.record_id, candidate.region.region.region_id, config.paint.seed)
    return int(key[:8], 16)


def _job(candidate: Candidate, reference: Reference, seed: int) -> PaintJob:
    return PaintJob(
        image=candidate.loaded.image,
        mask=candidate.region.mask,
        bbox=candidate.region.bbox,
        reference=reference.image,
        reference_mask=reference.mask,
        seed=seed,
    )


def _paint_all(painter: Painter, jobs: list[PaintJob]) -> list[Painted | Refused | str]:
    """Paint the batch at once; if it fails, paint one by one so one bad job costs one drop.
    A job the painter refuses (a ``Refused``, with its own reason) is a drop, not a failure."""
    if not jobs:
        return []
    try:
        return list(painter.paint(jobs))
    except PaintError:
        pass  # retried job by job below, each failure recorded as that job's drop reason
    out: list[Painted | Refused | str] = []
    for job in jobs:
        try:
            out.append(painter.paint([job])[0])
        except PaintError as error:
            out.append(str(error))
    return out


def _change(source: np.ndarray, painted: Painted) -> float:
    inside = painted.mask > 127
    if not inside.any():
        return 0.0
    return float(np.abs(painted.target[inside].astype(np.int16) - source[inside].astype(np.int16)).mean())


def _captions(done: list, captioner: BlipCaptioner | None) -> list[tuple[str, str]]:
    if captioner is None:
        return [(class_name_caption(c.label), class_name_caption(r.row["label"])) for c, r, _, _ in done]
    texts = captioner.caption([c.loaded.image for c, _, _, _ in done] + [p.target for _, _, p, _ in done])
    return list(zip(texts[: len(done)], texts[len(done) :], strict=True))


def _generator(candidate: Candidate, models: PairModels, seed: int) -> GeneratorInfo:
    """What made the sample: its key hashes this with the provenance (query region and reference).
    Regions from annotations need no proposer; proposed ones carry the proposer and its settings."""
    settings = models.settings
    regions = "annotations" if candidate.loaded.record.regions is not None else settings.proposer
    return GeneratorInfo(
        name=GENERATOR,
        backend=models.painter.backend,
        model=models.painter.model,
        seed=seed,
        settings={**settings.shared, "regions": regions},
    )


def _sample(
    candidate: Candidate,
    reference: Reference,
    painted: Painted,
    seed: int,
    before: str,
    after: str,
    models: PairModels,
    config: ReplacementConfig,
) -> Sample:
    record, region, row = candidate.loaded.record, candidate.region, reference.row
    provenance = record.provenance(region.region.region_id)
    provenance = Provenance(
        **{
            **provenance.model_dump(),
            "extra": {
                "reference": {
                    "dataset": row["dataset"],
                    "image_id": row["image_id"],
                    "region_id": row["region_id"],
                    "object_id": row["object_id"],
                    "license": row["license"],
                }
            },
        }
    )
    generator = _generator(candidate, models, seed)
    key = sample_key(Task.REPLACE, provenance, generator)
    source_object, target_object = candidate.label or "object", row["label"] or "object"
    if target_object == source_object:
        target_object = f"different {target_object}"  # "replace the cat with a different cat"
    instruction = write_instruction(
        key, before, after, source_object, target_object, models.writer, config.instructions
    )
    extra = {
        "source_object": source_object,
        "target_object": target_object,
        "source_label_source": candidate.label_source,
        "target_label_source": row["label_source"],
        "source_caption": before,
        "target_caption": after,
        "similarity": round(reference.match.similarity, 5),
        "area_fraction": round(region.area_fraction, 5),
        "bbox": list(region.bbox),
        "object_id": object_id(record.dataset, record.image_id, region.region.region_id),
        "regions_dropped": dict(candidate.loaded.dropped),
        **instruction.notes,
    }
    meta = SampleMeta(
        key=key,
        task=Task.REPLACE,
        instruction=instruction.text,
        instruction_source=instruction.source,
        provenance=provenance,
        generator=generator,
        record_id=record.record_id,
        pretrain_caption=after,
        extra=extra,
    )
    return Sample(meta=meta, source=candidate.loaded.image, target=painted.target, mask=painted.mask)
