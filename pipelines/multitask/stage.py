"""The multi-task stage: mixed records -> keypoint, segmentation and enhancement samples, or drops.

:class:`MultitaskStage` is the generator on the one stage contract: its input is every configured
source's records (:func:`iter_multitask_records`), a batch is rendered by :func:`multitask_stage` with
the captions table (loaded once per worker), and a folder of images that grew is new input.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from ieiw.pipelines.multitask.captions import load_captions
from ieiw.pipelines.multitask.config import (
    CocoKeypointSource,
    CocoStuffSource,
    GRefCocoSource,
    MpiiSource,
    MultitaskConfig,
    PairSource,
    PhraseCutSegmentationSource,
    RefCocoSource,
    SyntheticSource,
)
from ieiw.pipelines.multitask.enhancement import render_pair_sample, render_synthetic_sample
from ieiw.pipelines.multitask.enhancement_sources import iter_clean_images, iter_pairs
from ieiw.pipelines.multitask.keypoint_sources import iter_coco_keypoints, iter_mpii
from ieiw.pipelines.multitask.keypoints import render_keypoint_sample
from ieiw.pipelines.multitask.records import (
    CleanImageRecord,
    KeypointRecord,
    MultitaskRecord,
    PairRecord,
    ReferringRecord,
    SemanticRecord,
)
from ieiw.pipelines.multitask.segmentation import render_referring_sample, render_semantic_sample
from ieiw.pipelines.multitask.segmentation_sources import (
    iter_coco_stuff,
    iter_grefcoco,
    iter_phrasecut_referring,
    iter_refcoco,
)
from ieiw.storage.config import Role, WorkerEnv, config_fingerprint, input_limits, walk_fields
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.schema import Drop, Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage import HOST, ModelSpec, Stage, folder_listing_key, model_key

GENERATOR = "multitask"

_RENDERERS = (  # record type, its renderer, the config section the renderer takes
    (KeypointRecord, render_keypoint_sample, "keypoints"),
    (SemanticRecord, render_semantic_sample, "segmentation"),
    (ReferringRecord, render_referring_sample, "segmentation"),
    (PairRecord, render_pair_sample, "enhancement"),
    (CleanImageRecord, render_synthetic_sample, "enhancement"),
)


def multitask_stage(
    records: Iterable[MultitaskRecord], config: MultitaskConfig, captions: dict[str, str] | None = None
) -> list[Result]:
    """Render every record of the batch as a sample of its task, or a drop with its reason."""
    captions = captions or {}
    return [_render(record, config, captions) for record in records]


def _render(record: MultitaskRecord, config: MultitaskConfig, captions: dict[str, str]) -> Result:
    for record_type, renderer, section in _RENDERERS:
        if isinstance(record, record_type):
            return renderer(record, _need(getattr(config, section), section), config.resolution, captions)
    raise TypeError(f"not a multi-task record: {type(record).__name__}")


def _need(section, name: str):
    if section is None:
        raise ValueError(f"a {name} record arrived but the config has no multitask.{name} section")
    return section


def _limited(items: Iterator, limit: int | None) -> Iterator:
    return itertools.islice(items, limit) if limit is not None else items


def _views(items: Iterator[KeypointRecord | Drop], per_person: int) -> Iterator[KeypointRecord | Drop]:
    """Each person ``per_person`` times, as records ``<id>#<n>`` (the first keeps its id)."""
    for item in items:
        yield item
        if isinstance(item, KeypointRecord):
            for view in range(1, per_person):
                yield dataclasses.replace(item, record_id=f"{item.record_id}#{view}", view=view)


def _licensed(items: Iterator, license: str | None) -> Iterator:
    """The source's records with its configured license (drops pass through)."""
    for item in items:
        if license is not None and not isinstance(item, Drop):
            item.license = license
        yield item


def iter_multitask_records(config: MultitaskConfig) -> Iterator[MultitaskRecord | Drop]:
    """Every configured source's records (and reader drops), task by task, each source up to its limit."""
    if config.keypoints:
        for source in config.keypoints.sources:
            if isinstance(source, CocoKeypointSource):
                items = iter_coco_keypoints(
                    source.annotations, source.images, source.dataset, config.keypoints.include_occluded
                )
            elif isinstance(source, MpiiSource):
                items = iter_mpii(source.annotations, source.images, source.dataset)
            yield from _views(
                _limited(_licensed(items, source.license), config.keypoints.limit),
                config.keypoints.per_person,
            )
    if config.segmentation:
        for source in config.segmentation.sources:
            if isinstance(source, CocoStuffSource):
                items = iter_coco_stuff(
                    source.root, source.split, source.labels, source.dataset, source.label_offset
                )
            elif isinstance(source, RefCocoSource):
                items = iter_refcoco(
                    source.refs, source.instances, source.images, source.dataset, source.split
                )
            elif isinstance(source, GRefCocoSource):
                items = iter_grefcoco(
                    source.refs, source.instances, source.images, source.dataset, source.split
                )
            elif isinstance(source, PhraseCutSegmentationSource):
                items = iter_phrasecut_referring(source.annotations, source.images, source.dataset)
            yield from _limited(_licensed(items, source.license), config.segmentation.limit)
    if config.enhancement:
        for source in config.enhancement.sources:
            if isinstance(source, PairSource):
                items = iter_pairs(source.kind, source.root, source.split, source.dataset)
            elif isinstance(source, SyntheticSource):
                items = iter_clean_images(
                    source.images, list(source.degradations), source.per_image, source.dataset
                )
            yield from _limited(_licensed(items, source.license), config.enhancement.limit)


class MultitaskStage(Stage):
    """Keypoint, segmentation and enhancement records rendered as edits, a batch at a time."""

    name = GENERATOR

    def __init__(self, config: MultitaskConfig, url: str, shards: ShardSpec | None = None) -> None:
        super().__init__(url, config.batch_size, shards)
        self.config = config

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        return config_fingerprint(self.name, self.config, env)

    def records(self) -> Iterator[MultitaskRecord | Drop]:
        return iter_multitask_records(self.config)

    def models(self) -> Mapping[str, ModelSpec]:
        """The captions table (COCO captions files, parsed once per worker process), if configured."""
        paths = list(self.config.captions)
        if not paths:
            return {}
        return {
            "captions": ModelSpec(
                model_key("captions", None, _stats(paths)), partial(load_captions, paths), HOST
            )
        }

    def run(self, records: list[Any], models: Mapping[str, Any]) -> list[Result]:
        return multitask_stage(records, self.config, models.get("captions") or {})

    def input_key(self) -> str | None:
        """The limits and a cheap listing (names and sizes) of every image folder: images added to a
        folder are new input. The annotation files are in the fingerprint by content; a remote or
        missing one must be read again to be known."""
        files = [str(v) for v in _values(self.config, Role.INPUT_FILE)]
        if any("://" in path or not os.path.isfile(path) for path in files):
            return None
        folders = sorted({str(v) for v in _values(self.config, Role.INPUT_FOLDER)})
        return json.dumps(
            {"limits": input_limits(self.config), "folders": folder_listing_key(*folders)}, sort_keys=True
        )


def _values(config: MultitaskConfig, role: Role) -> list[Any]:
    """Every non-empty value of the fields of ``role``, at any depth (lists flattened)."""
    found: list[Any] = []
    for _, field_role, value, _ in walk_fields(config):
        if field_role is role:
            found += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v]
    return found


def _stats(paths: list[str]) -> list[tuple[str, int, int]]:
    """Files by path, size and modification time: a changed file is another table in a worker's cache."""
    out = []
    for path in paths:
        try:
            stat = os.stat(path)
            out.append((path, stat.st_size, stat.st_mtime_ns))
        except OSError:
            out.append((path, -1, -1))
    return out
