"""Object removal, the paper's first IEIW source: inpaint a referred object away.

Source = photo, target = photo without the object, instruction "remove the <phrase>"; every pair
is also reversed into an "add <phrase>" pair, as in the paper. With ``sessions`` set, the phrases of
one image are removed one after another instead (:mod:`ieiw.pipelines.removal_sessions`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ieiw.pipelines.inpaint.base import Inpainter, InpaintError
from ieiw.pipelines.instructions.templates import render
from ieiw.pipelines.sources.phrasecut import (
    LoadedRegion,
    PhraseCutRecord,
    PhraseCutSession,
    RegionSettings,
    load_region,
)
from ieiw.storage.schema import Drop, GeneratorInfo, Result, Sample, SampleMeta, Task, sample_key, stable_key

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


def inpaint_all(inpainter: Inpainter, regions: list[LoadedRegion]) -> list[np.ndarray | Drop]:
    """Inpaint the batch at once; if the batch fails, retry one by one so one bad image costs one drop."""
    if not regions:
        return []
    try:
        return list(inpainter.inpaint([r.image for r in regions], [r.mask for r in regions]))
    except InpaintError:
        pass  # fall through to per-image calls, each failure recorded with its own reason below
    out: list[np.ndarray | Drop] = []
    for region in regions:
        try:
            out.append(inpainter.inpaint([region.image], [region.mask])[0])
        except InpaintError as error:
            out.append(
                Drop(
                    key=stable_key(region.record.record_id, "inpaint_failed"),
                    reason="inpaint_failed",
                    detail=str(error),
                    record_id=region.record.record_id,
                    provenance=region.record.provenance,
                )
            )
    return out


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
