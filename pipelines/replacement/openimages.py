"""Open Images V7 segmentation reader: the masks CSV, the mask PNGs and the class descriptions.

The segmentation CSV has one row per mask: ``MaskPath, ImageID, LabelName, BoxID, BoxXMin,
BoxXMax, BoxYMin, BoxYMax, PredictedIoU, Clicks``. The class-description CSV maps ``LabelName``
(``/m/01g317``) to a readable name (``Person``), with or without a header row. The official CSVs
list an image's masks together; rows are grouped while streaming, so memory holds one image.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Iterator

from ieiw.pipelines.replacement.records import ImageRecord, Region, record_drop
from ieiw.storage.schema import Drop

DATASET = "openimages"
LICENSE = "CC BY 4.0 (Open Images annotations); images CC BY 2.0 per image"
REQUIRED = ("MaskPath", "ImageID", "LabelName")


def read_class_names(path: str) -> dict[str, str]:
    """``LabelName -> DisplayName`` from the class-description CSV."""
    names: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle):
            if len(row) < 2 or row[0] == "LabelName":
                continue
            names[row[0]] = row[1]
    return names


def iter_records(
    segmentation_csv: str, mask_dir: str, image_dir: str, class_names: dict[str, str] | None = None
) -> Iterator[ImageRecord | Drop]:
    """Yield one :class:`ImageRecord` per image of the CSV (its masks as regions)."""
    class_names = class_names or {}
    seen: dict[str, int] = {}
    with open(segmentation_csv, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            yield record_drop(
                f"{DATASET}:{os.path.basename(segmentation_csv)}",
                "bad_annotation",
                f"{segmentation_csv} lacks columns {missing}",
            )
            return
        for image_id, rows in itertools.groupby(reader, key=lambda r: r["ImageID"]):
            part = seen.get(image_id, 0)
            seen[image_id] = part + 1
            yield _record(image_id, list(rows), part, mask_dir, image_dir, class_names)


def _record(
    image_id: str, rows: list[dict], part: int, mask_dir: str, image_dir: str, class_names: dict[str, str]
) -> ImageRecord | Drop:
    # an image whose rows are not contiguous comes back as a continuation record
    record_id = f"{DATASET}:{image_id}" + (f"#{part}" if part else "")
    regions = []
    for index, row in enumerate(rows):
        if not row.get("MaskPath") or not row.get("LabelName"):
            return record_drop(
                record_id, "bad_annotation", f"image {image_id}: row {index} lacks a mask or label"
            )
        try:
            iou = float(row["PredictedIoU"]) if row.get("PredictedIoU") not in (None, "") else None
        except ValueError:
            return record_drop(
                record_id, "bad_annotation", f"image {image_id}: PredictedIoU {row['PredictedIoU']!r}"
            )
        label = row["LabelName"]
        regions.append(
            Region(
                region_id=os.path.splitext(os.path.basename(row["MaskPath"]))[0],
                label=class_names.get(label, label).lower(),
                predicted_iou=iou,
                mask_path=os.path.join(mask_dir, row["MaskPath"]),
                extra={"label_name": label, "box_id": row.get("BoxID") or ""},
            )
        )
    return ImageRecord(
        record_id=record_id,
        dataset=DATASET,
        image_id=image_id,
        image_path=os.path.join(image_dir, f"{image_id}.jpg"),
        regions=regions,
        license=LICENSE,
    )
