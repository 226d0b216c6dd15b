"""A folder of images without masks: their regions come from a proposer (SAM or a classical one)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from ieiw.pipelines.replacement.records import ImageRecord
from ieiw.pipelines.sources.folders import files_with_suffix

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def iter_records(
    image_dir: str, dataset: str = "images", license: str | None = None
) -> Iterator[ImageRecord]:
    """One record per image file of ``image_dir`` (sorted by name), with ``regions=None``."""
    for name in files_with_suffix(image_dir, IMAGE_SUFFIXES):
        image_id = os.path.splitext(name)[0]
        yield ImageRecord(
            record_id=f"{dataset}:{image_id}",
            dataset=dataset,
            image_id=image_id,
            image_path=os.path.join(image_dir, name),
            regions=None,
            license=license,
        )
