"""A folder of images without masks: their regions come from a proposer (SAM or a classical one)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from pipelines.replacement.records import ImageRecord

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def iter_records(
    image_dir: str, dataset: str = "images", license: str | None = None
) -> Iterator[ImageRecord]:
    """One record per image file of ``image_dir`` (sorted by name), with ``regions=None``."""
    with os.scandir(image_dir) as entries:
        names = sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES))
    for name in names:
        image_id = os.path.splitext(name)[0]
        yield ImageRecord(
            record_id=f"{dataset}:{image_id}",
            dataset=dataset,
            image_id=image_id,
            image_path=os.path.join(image_dir, name),
            regions=None,
            license=license,
        )
