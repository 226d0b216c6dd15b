"""Object removal, the paper's first IEIW source: inpaint a referred object away.

Source = photo, target = photo without the object, instruction "remove the <phrase>"; every pair
is also reversed into an "add <phrase>" pair, as in the paper. With ``sessions`` set, the phrases of
one image are removed one after another instead (:mod:`ieiw.pipelines.removal_sessions`).
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import ijson
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ieiw.pipelines.inpaint.base import Inpainter, InpaintError
from ieiw.pipelines.inpaint.factory import InpaintConfig, build_inpainter
from ieiw.pipelines.instructions.templates import render
from ieiw.pipelines.sources.phrasecut import (
    LICENSE,
    LoadedRegion,
    PhraseCutRecord,
    PhraseCutSession,
    RegionSettings,
    group_sessions,
    iter_records,
    load_image_data,
    load_region,
)
from ieiw.storage.config import (
    WorkerEnv,
    config_fingerprint,
    input_file,
    input_folder,
    input_limits,
    limit,
    model_references,
    operational,
)
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
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage import ModelSpec, ModelUse, Stage, Work, gpu_tags, model_key

GENERATOR = "removal"


@dataclass
class SessionSettings:
    """Multi-turn sessions: up to ``max_turns`` phrases of one image removed one after another."""

    max_turns: int = 3
    # a phrase whose region is covered more than this by earlier turns' (dilated) masks is not a turn of
    # the session (it is likely the same object named again) but an ordinary pair on the photo
    max_overlap: float = 0.1
    whole_session: bool = True  # the session's first source and last target as one more sample


@dataclass
class RemovalSettings:
    region: RegionSettings = field(default_factory=RegionSettings)
    make_add_pairs: bool = True
    min_change: float = 1.0  # mean absolute change inside the mask below this means inpainting did nothing
    sessions: SessionSettings | None = None  # None: every phrase is its own pair


class PhraseCutSource(BaseModel):
    """PhraseCut's referring phrases and polygons over Visual Genome images."""

    model_config = ConfigDict(extra="forbid")

    annotations: list[str] = input_file()  # refer_*.json files
    images: str = input_folder()  # folder of Visual Genome <image_id>.jpg
    dataset: str = "phrasecut"  # provenance of every sample: dataset name, license, image URLs
    license: str | None = LICENSE
    # image_data_split.json (PhraseCut) or image_data.json (Visual Genome): each image's URL and size
    image_data: str | None = input_file(None)
    url_template: str | None = None  # only without image_data; VG's images live under two folders


class SessionOptions(BaseModel):
    """Multi-turn sessions of a removal generator (PhraseCut's, the grounded one): the objects of one image
    removed one after another (:mod:`ieiw.pipelines.removal_sessions`)."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=3, ge=2)
    max_overlap: float = Field(default=0.1, ge=0, le=1)  # more covered by earlier turns: an ordinary pair
    whole_session: bool = True  # also the first source and the last target as one sample

    def settings(self) -> SessionSettings:
        return SessionSettings(self.max_turns, self.max_overlap, self.whole_session)


class SessionsConfig(SessionOptions):
    """PhraseCut's sessions: the phrases of one image, gathered from an annotation stream of any order."""

    window: int = Field(default=256, ge=1)  # images whose phrases are gathered at once from the stream


class RemovalConfig(BaseModel):
    """The object-removal generator (PhraseCut regions inpainted away, plus reversed add pairs)."""

    model_config = ConfigDict(extra="forbid")

    source: PhraseCutSource
    inpaint: InpaintConfig = Field(default_factory=InpaintConfig)
    dilation: int = 15
    min_area_fraction: float = 0.005
    max_area_fraction: float = 0.5
    make_add_pairs: bool = True
    min_change: float = 1.0
    sessions: SessionsConfig | None = None  # multi-turn sessions; None: every phrase is its own pair
    batch_size: int = operational(64)  # records per task and per commit: amortises orchestration
    limit: int | None = limit(None)  # at most this many annotation tasks

    def settings(self) -> RemovalSettings:
        return RemovalSettings(
            region=RegionSettings(self.dilation, self.min_area_fraction, self.max_area_fraction),
            make_add_pairs=self.make_add_pairs,
            min_change=self.min_change,
            sessions=self.sessions.settings() if self.sessions is not None else None,
        )


class RemovalStage(Stage):
    """PhraseCut regions inpainted away (and reversed into add pairs), a batch of records at a time."""

    name = GENERATOR

    def __init__(self, config: RemovalConfig, url: str, shards: ShardSpec | None = None) -> None:
        inpaint = config.inpaint
        super().__init__(url, config.batch_size, shards, gpu_tags(inpaint.backend == "lama", inpaint.device))
        self.config = config

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        return config_fingerprint(self.name, self.config, env)

    def records(self) -> Iterator[PhraseCutRecord | PhraseCutSession | Drop]:
        """The records to remove (``limit`` counts annotation tasks); with sessions, grouped by image."""
        source, config = self.config.source, self.config
        image_data = load_image_data(source.image_data) if source.image_data else None
        items = itertools.chain.from_iterable(
            iter_records(a, source.images, source.dataset, source.license, source.url_template, image_data)
            for a in source.annotations
        )
        items = itertools.islice(items, config.limit) if config.limit is not None else items
        if config.sessions is not None:
            return group_sessions(items, config.sessions.max_turns, config.sessions.window)
        return items

    def models(self) -> Mapping[str, ModelSpec]:
        inpaint = self.config.inpaint
        return {
            "inpainter": ModelSpec(
                model_key("inpainter", inpaint),
                partial(build_inpainter, inpaint),
                inpaint.device,
                inpaint.batch_size,
            )
        }

    def run(self, records: list[Any], models: Mapping[str, Any]) -> list[Result]:
        return removal_stage(records, models["inpainter"], self.config.settings())

    def input_key(self) -> str | None:
        """The input is the annotation files (in the fingerprint by content) cut by ``limit``; a remote or
        missing file must be read again to be known."""
        source = self.config.source
        files = [*source.annotations, *([source.image_data] if source.image_data else [])]
        if any("://" in path or not os.path.isfile(path) for path in files):
            return None
        return json.dumps(input_limits(self.config), sort_keys=True)

    def total(self) -> int | None:
        """How many tasks the annotation files hold (a cheap streaming pass); None if unreadable, or with
        sessions (fewer records than tasks)."""
        if self.config.sessions is not None:
            return None
        return count_tasks(self.config)

    def info(self) -> dict[str, Any]:
        return {"models": model_references(self.config)}

    unit = "PhraseCut tasks"

    def model_uses(self) -> list[ModelUse]:
        inpaint = self.config.inpaint
        if inpaint.backend != "lama":
            return [ModelUse("inpainter", f"OpenCV {inpaint.opencv_method} (classical)", "cpu")]
        how = "whole image" if inpaint.strategy == "whole" else f"crop {inpaint.window}px windows"
        name = os.path.basename(str(inpaint.model).rstrip("/"))
        return [ModelUse("inpainter", f"LaMa {name} ({how})", inpaint.device)]

    def workload(self, inputs: int | None) -> list[Work]:
        return [Work("lama_windows", inputs)] if self.config.inpaint.backend == "lama" else []

    def samples_made(self, inputs: int | None) -> int | None:
        return None if inputs is None else inputs * (2 if self.config.make_add_pairs else 1)


def count_tasks(config: RemovalConfig) -> int | None:
    """How many tasks the annotation files hold (a cheap streaming pass), cut by ``limit``; None if
    unreadable."""
    total = 0
    for path in config.source.annotations:
        try:
            with open(path, "rb") as handle:
                total += sum(1 for _ in ijson.items(handle, "item.task_id"))
        except (OSError, ijson.JSONError):
            return None
    return min(total, config.limit) if config.limit is not None else total


def generator_info(inpainter: Inpainter, settings: RemovalSettings) -> GeneratorInfo:
    return GeneratorInfo(
        name=GENERATOR,
        backend=inpainter.backend,
        model=inpainter.model,
        settings={**asdict(settings.region), **inpainter.settings()},
    )


def removal_stage(
    records: list[PhraseCutRecord | PhraseCutSession], inpainter: Inpainter, settings: RemovalSettings
) -> list[Result]:
    """Turn a batch of PhraseCut records (and sessions of them) into remove (and add) samples, or drops."""
    sessions = [r for r in records if isinstance(r, PhraseCutSession)]
    results: list[Result] = []
    if sessions:
        from ieiw.pipelines.removal_sessions import session_results  # it builds on this module

        if settings.sessions is None:
            raise ValueError("a batch holds sessions but the removal settings have none")
        results += session_results(sessions, inpainter, settings)
    regions: list[LoadedRegion] = []
    for record in records:
        if isinstance(record, PhraseCutSession):
            continue
        loaded = load_region(record, settings.region)
        (results if isinstance(loaded, Drop) else regions).append(loaded)
    return results + plain_pairs(regions, inpainter, settings)


def plain_pairs(regions: list[LoadedRegion], inpainter: Inpainter, settings: RemovalSettings) -> list[Result]:
    """Each loaded region inpainted away from its photo (in one batch): its remove and add pairs."""
    results: list[Result] = []
    generator = generator_info(inpainter, settings)
    for region, target in zip(regions, inpaint_all(inpainter, regions), strict=True):
        if isinstance(target, Drop):
            results.append(target)
            continue
        results.extend(region_pairs(region, target, generator, settings))
    return results


def inpaint_batch(
    inpainter: Inpainter, images: list[np.ndarray], masks: list[np.ndarray]
) -> list[np.ndarray | InpaintError]:
    """Inpaint the batch at once; if the batch fails, one by one, so one bad image costs one result (its
    :class:`InpaintError` in its place)."""
    if not images:
        return []
    try:
        return list(inpainter.inpaint(images, masks))
    except InpaintError:
        pass  # fall through to per-image calls, each failure kept with its own message below
    out: list[np.ndarray | InpaintError] = []
    for image, mask in zip(images, masks, strict=True):
        try:
            out.append(inpainter.inpaint([image], [mask])[0])
        except InpaintError as error:
            out.append(error)
    return out


def inpaint_failed(record_id: str, provenance: Provenance, error: InpaintError) -> Drop:
    """The drop of a region whose inpainting failed."""
    return Drop(
        key=stable_key(record_id, "inpaint_failed"),
        reason="inpaint_failed",
        detail=str(error),
        record_id=record_id,
        provenance=provenance,
    )


def inpaint_all(inpainter: Inpainter, regions: list[LoadedRegion]) -> list[np.ndarray | Drop]:
    """Inpaint the regions at once (:func:`inpaint_batch`); a region that fails is its drop."""
    targets = inpaint_batch(inpainter, [r.image for r in regions], [r.mask for r in regions])
    return [
        inpaint_failed(r.record.record_id, r.record.provenance, t) if isinstance(t, InpaintError) else t
        for r, t in zip(regions, targets, strict=True)
    ]


def mask_change(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
    """The mean absolute change of the pixels inside ``mask``."""
    inside = mask > 127
    return float(np.abs(target[inside].astype(np.int16) - source[inside].astype(np.int16)).mean())


def region_pairs(
    region: LoadedRegion, target: np.ndarray, generator: GeneratorInfo, settings: RemovalSettings
) -> list[Result]:
    record = region.record
    provenance = record.provenance
    remove_key = sample_key(Task.REMOVE, provenance, generator)
    change = mask_change(region.image, target, region.mask)
    if change < settings.min_change:
        return [
            Drop(
                key=remove_key,
                reason="inpaint_no_change",
                detail=f"mean change {change:.3f} in mask",
                record_id=record.record_id,
                task=str(Task.REMOVE),
                provenance=provenance,
            )
        ]
    extra = {
        "phrase": record.phrase,
        "area_fraction": round(region.area_fraction, 5),
        "mask_change": round(change, 3),
    }

    def pair(task: Task, source: np.ndarray, target_image: np.ndarray, details: dict) -> Sample:
        key = sample_key(task, provenance, generator)
        instruction, instruction_source = render(str(task), key, phrase=record.phrase)
        meta = SampleMeta(
            key=key,
            task=task,
            instruction=instruction,
            instruction_source=instruction_source,
            provenance=provenance,
            generator=generator,
            record_id=record.record_id,
            extra=details,
        )
        return Sample(meta=meta, source=source, target=target_image, mask=region.mask)

    remove = pair(Task.REMOVE, region.image, target, extra)
    if not settings.make_add_pairs:
        return [remove]
    return [remove, pair(Task.ADD, target, region.image, {**extra, "reverse_of": remove_key})]
