"""SA-1B reader: one ``sa_<id>.json`` per image next to its ``sa_<id>.jpg``.

Each JSON holds ``image`` (``image_id``, ``width``, ``height``, ``file_name``) and ``annotations``,
each with a COCO RLE ``segmentation`` (``size``, ``counts``), ``bbox``, ``area``,
``predicted_iou``, ``stability_score``, ``point_coords`` and ``crop_box``. Files are read one at a
time, so a folder of any size streams.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

from ieiw.pipelines.replacement.records import ImageRecord, Region, record_drop
from ieiw.pipelines.sources.folders import files_with_suffix
from ieiw.storage.schema import Drop

DATASET = "sa1b"
LICENSE = "SA-1B Dataset Research License (Meta AI)"


def annotation_files(folder: str) -> list[str]:
    """The ``*.json`` files of one SA-1B folder, sorted by name."""
    return [os.path.join(folder, name) for name in files_with_suffix(folder, (".json",), ignore_case=False)]


def iter_records(folders: Iterable[str], image_dir: str | None = None) -> Iterator[ImageRecord | Drop]:
    """Yield an :class:`ImageRecord` per annotation file (images beside it unless ``image_dir``)."""
    for folder in folders:
        for path in annotation_files(folder):
            yield read_annotation(path, image_dir or folder)


def read_annotation(path: str, image_dir: str) -> ImageRecord | Drop:
    stem = os.path.splitext(os.path.basename(path))[0]
    record_id = f"{DATASET}:{stem}"
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        image = data["image"]
        image_id = str(image["image_id"])
        file_name = str(image.get("file_name") or f"{stem}.jpg")
        regions = [_region(a, i) for i, a in enumerate(data["annotations"])]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return record_drop(record_id, "bad_annotation", f"{path}: {type(error).__name__}: {error}")
    return ImageRecord(
        record_id=f"{DATASET}:{image_id}",
        dataset=DATASET,
        image_id=image_id,
        image_path=os.path.join(image_dir, file_name),
        regions=regions,
        license=LICENSE,
    )


def _region(annotation: dict, index: int) -> Region:
    segmentation = annotation["segmentation"]
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise ValueError(f"annotation {index}: segmentation is not a COCO RLE")
    return Region(
        region_id=str(annotation.get("id", index)),
        predicted_iou=_float(annotation.get("predicted_iou")),
        stability_score=_float(annotation.get("stability_score")),
        rle=segmentation,
        extra={"point_coords": annotation.get("point_coords"), "crop_box": annotation.get("crop_box")},
    )


def _float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
