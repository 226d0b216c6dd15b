"""Build the object database one batch of images at a time: select, crop, embed, name, store."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.crops import CropConfig, masked_crop, pad_square
from ieiw.pipelines.replacement.database import image_key, object_id
from ieiw.pipelines.replacement.labels import ZeroShotLabeler
from ieiw.pipelines.replacement.proposals import Proposer
from ieiw.pipelines.replacement.records import ImageRecord, encode_rle
from ieiw.pipelines.replacement.selection import SelectedRegion
from ieiw.pipelines.replacement.sources import LoadedImage, load_image_regions
from ieiw.storage.schema import Drop


@dataclass
class ObjectBatch:
    vectors: np.ndarray  # (N, D) float32 unit rows
    rows: list[dict]  # database metadata, one per vector
    dropped: Counter  # images and regions left out, by reason
    images: int = 0
    image_table: list[dict] = field(default_factory=list)  # each image read: its rejected regions


def embed_regions(embedder, image: np.ndarray, regions: list[SelectedRegion], crop: CropConfig) -> np.ndarray:
    crops = [pad_square(masked_crop(image, r.mask, r.bbox, crop).image) for r in regions]
    return embedder.embed_images(crops)


def name_regions(
    regions: list[SelectedRegion], vectors: np.ndarray, labeler: ZeroShotLabeler | None
) -> list[tuple[str | None, str | None]]:
    """``(label, label_source)`` per region: the annotation's class, else CLIP zero-shot, else none."""
    guesses = labeler.label(vectors) if labeler is not None else [None] * len(regions)
    out: list[tuple[str | None, str | None]] = []
    for region, guess in zip(regions, guesses, strict=True):
        if region.region.label:
            out.append((region.region.label, "annotation"))
        elif guess is not None:
            out.append((guess, ZeroShotLabeler.source))
        else:
            out.append((None, None))
    return out


def object_row(
    record: ImageRecord,
    image: np.ndarray,
    region: SelectedRegion,
    label: str | None,
    label_source: str | None,
) -> dict:
    rle = encode_rle(region.mask)
    r = region.region
    return {
        "object_id": object_id(record.dataset, record.image_id, r.region_id),
        "dataset": record.dataset,
        "image_id": record.image_id,
        "region_id": r.region_id,
        "image_path": record.image_path,
        "license": record.license,
        "label": label,
        "label_source": label_source,
        "bbox": list(region.bbox),
        "area_fraction": region.area_fraction,
        "predicted_iou": r.predicted_iou,
        "stability_score": r.stability_score,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "rle_counts": rle["counts"],
    }


def object_batch(
    records: list[ImageRecord | Drop],
    embedder,
    proposer: Proposer | None,
    labeler: ZeroShotLabeler | None,
    config: ReplacementConfig,
) -> ObjectBatch:
    dropped: Counter = Counter()
    vectors: list[np.ndarray] = []
    rows: list[dict] = []
    image_table: list[dict] = []
    images = 0
    for record in records:
        if isinstance(record, Drop):
            dropped[record.reason] += 1
            continue
        loaded = load_image_regions(record, proposer, config.selection)
        if isinstance(loaded, Drop):
            dropped[loaded.reason] += 1
            continue
        images += 1
        dropped.update(loaded.dropped)
        image_table.append(
            {
                "image_key": image_key(record.dataset, record.image_id),
                "record_id": record.record_id,
                "regions_dropped": json.dumps(dict(sorted(loaded.dropped.items()))),
            }
        )
        keep = _best(loaded, config.database.objects_per_image, dropped)
        if not keep:
            continue
        embedded = embed_regions(embedder, loaded.image, keep, config.crop)
        for region, vector, (label, source) in zip(keep, embedded, name_regions(keep, embedded, labeler)):
            rows.append(object_row(record, loaded.image, region, label, source))
            vectors.append(vector)
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, embedder.dim), np.float32)
    return ObjectBatch(matrix, rows, dropped, images, image_table)


def _best(loaded: LoadedImage, limit: int, dropped: Counter) -> list[SelectedRegion]:
    if len(loaded.regions) > limit:
        dropped["over_objects_per_image"] += len(loaded.regions) - limit
    return loaded.regions[:limit]
