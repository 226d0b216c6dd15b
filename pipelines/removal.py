"""Object removal, the paper's first IEIW source: inpaint a referred object away.

Source = photo, target = photo without the object, instruction "remove the <phrase>"; every pair
is also reversed into an "add <phrase>" pair, as in the paper.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ieiw.pipelines.inpaint.base import Inpainter, InpaintError
from ieiw.pipelines.instructions.templates import render
from ieiw.pipelines.sources.phrasecut import LoadedRegion, PhraseCutRecord, RegionSettings, load_region
from ieiw.storage.schema import Drop, GeneratorInfo, Result, Sample, SampleMeta, Task, sample_key, stable_key

GENERATOR = "removal"


@dataclass
class RemovalSettings:
    region: RegionSettings = field(default_factory=RegionSettings)
    make_add_pairs: bool = True
    min_change: float = 1.0  # mean absolute change inside the mask below this means inpainting did nothing


def generator_info(inpainter: Inpainter, settings: RemovalSettings) -> GeneratorInfo:
    return GeneratorInfo(
        name=GENERATOR,
        backend=inpainter.backend,
        model=inpainter.model,
        settings={**asdict(settings.region), **inpainter.settings()},
    )


def removal_stage(
    records: list[PhraseCutRecord], inpainter: Inpainter, settings: RemovalSettings
) -> list[Result]:
    """Turn a batch of PhraseCut records into remove (and add) samples, or drops with reasons."""
    results: list[Result] = []
    regions: list[LoadedRegion] = []
    for record in records:
        loaded = load_region(record, settings.region)
        (results if isinstance(loaded, Drop) else regions).append(loaded)
    generator = generator_info(inpainter, settings)
    for region, target in zip(regions, _inpaint_all(inpainter, regions), strict=True):
        if isinstance(target, Drop):
            results.append(target)
            continue
        results.extend(_pairs(region, target, generator, settings))
    return results


def _inpaint_all(inpainter: Inpainter, regions: list[LoadedRegion]) -> list[np.ndarray | Drop]:
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


def _pairs(
    region: LoadedRegion, target: np.ndarray, generator: GeneratorInfo, settings: RemovalSettings
) -> list[Result]:
    record = region.record
    provenance = record.provenance
    remove_key = sample_key(Task.REMOVE, provenance, generator)
    inside = region.mask > 127
    change = float(np.abs(target[inside].astype(np.int16) - region.image[inside].astype(np.int16)).mean())
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
