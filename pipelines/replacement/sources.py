"""Records of every configured source, streamed in order, and how regions are obtained for them."""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ieiw.pipelines.replacement import folder, openimages, sa1b
from ieiw.pipelines.replacement.config import (
    ImageFolderSource,
    OpenImagesSource,
    ProposerConfig,
    ReplacementConfig,
    SA1BSource,
    Source,
)
from ieiw.pipelines.replacement.proposals import FelzenszwalbProposer, Proposer
from ieiw.pipelines.replacement.records import ImageRecord, read_image, record_drop
from ieiw.pipelines.replacement.selection import SelectedRegion, SelectionConfig, select_regions
from ieiw.pipelines.sources.folders import files_with_suffix
from ieiw.storage.schema import Drop


def iter_source(source: Source) -> Iterator[ImageRecord | Drop]:
    if isinstance(source, SA1BSource):
        return sa1b.iter_records(source.folders, source.images)
    if isinstance(source, OpenImagesSource):
        names = openimages.read_class_names(source.class_descriptions) if source.class_descriptions else {}
        return openimages.iter_records(source.segmentation_csv, source.masks, source.images, names)
    if isinstance(source, ImageFolderSource):
        return folder.iter_records(source.images, source.dataset, source.license)
    raise TypeError(f"unknown source {type(source).__name__}")


def iter_records(config: ReplacementConfig) -> Iterator[ImageRecord | Drop]:
    items = itertools.chain.from_iterable(iter_source(s) for s in config.sources)
    return itertools.islice(items, config.limit) if config.limit is not None else items


def count_source(source: Source) -> int:
    """How many records a source yields, by listing files or streaming the CSV, never by reading
    annotations (an Open Images record is a run of rows of one ImageID, as its reader groups them)."""
    if isinstance(source, SA1BSource):
        return sum(len(sa1b.annotation_files(f)) for f in source.folders)
    if isinstance(source, OpenImagesSource):
        with open(source.segmentation_csv, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return sum(1 for _ in itertools.groupby(row["ImageID"] for row in reader))
    if isinstance(source, ImageFolderSource):
        return len(files_with_suffix(source.images, folder.IMAGE_SUFFIXES))
    raise TypeError(f"unknown source {type(source).__name__}")


def count_records(config: ReplacementConfig) -> dict[str, int | None]:
    """The records of each source (its kind and position as the key; None where it is unreadable)."""
    counts: dict[str, int | None] = {}
    for number, source in enumerate(config.sources):
        try:
            counts[f"{number}:{source.kind}"] = count_source(source)
        except (OSError, KeyError, csv.Error):
            counts[f"{number}:{source.kind}"] = None
    return counts


def build_proposer(config: ProposerConfig) -> Proposer:
    if config.backend == "felzenszwalb":
        return FelzenszwalbProposer(
            config.felzenszwalb_scale,
            config.felzenszwalb_sigma,
            config.felzenszwalb_min_size,
            config.max_regions,
        )
    from ieiw.pipelines.replacement.sam import SamProposer

    return SamProposer(config.sam)


@dataclass
class LoadedImage:
    record: ImageRecord
    image: np.ndarray
    regions: list[SelectedRegion]  # kept, best first
    dropped: Counter  # rejected regions by reason


def load_image_regions(
    record: ImageRecord, proposer: Proposer | None, selection: SelectionConfig
) -> LoadedImage | Drop:
    """Read the image, get its regions (annotations or proposals) and keep the semantic ones."""
    image = read_image(record)
    if isinstance(image, Drop):
        return image
    regions = record.regions
    if regions is None:
        if proposer is None:
            return record_drop(
                record.record_id,
                "no_proposer",
                f"{record.image_path} has no masks and no proposer is configured",
                record.provenance(),
            )
        regions = proposer.propose(image)
    kept, dropped = select_regions(regions, image.shape[0], image.shape[1], selection)
    return LoadedImage(record, image, kept, dropped)
