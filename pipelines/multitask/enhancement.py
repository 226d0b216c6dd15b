"""Enhancement as an edit: the degraded image is the source, the clean one the target.

Pairs come from GoPro, REDS, SIDD or CLWD, or from clean photos degraded synthetically; every
synthetic sample says so (``extra.synthetic`` and the generator backend).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ieiw.pipelines.multitask.captions import base_caption, enhancement_caption
from ieiw.pipelines.multitask.config import EnhancementConfig
from ieiw.pipelines.multitask.degradations import TASK_OF, degrade
from ieiw.pipelines.multitask.records import CleanImageRecord, PairRecord
from ieiw.pipelines.multitask.render import SquareWindow, seeded_rng, window_around_mask
from ieiw.pipelines.multitask.samples import SampleBuilder
from ieiw.pipelines.multitask.templates import render
from ieiw.storage.schema import Drop, GeneratorInfo, Sample, Task

GENERATOR = "multitask"


def enhancement_generator(
    config: EnhancementConfig, resolution: int, backend: str, **settings: Any
) -> GeneratorInfo:
    return GeneratorInfo(
        name=GENERATOR,
        backend=backend,
        settings={"task": "enhancement", "resolution": resolution, "patch": config.patch, **settings},
    )


def patch_window(
    height: int, width: int, resolution: int, patch: str, rng: np.random.Generator
) -> SquareWindow:
    """A native-resolution ``resolution`` square at a random place, or the centred largest square resized."""
    if patch == "crop" and min(height, width) >= resolution:
        x0 = int(rng.integers(0, width - resolution + 1))
        y0 = int(rng.integers(0, height - resolution + 1))
        return SquareWindow(x0, y0, resolution, resolution)
    return window_around_mask(np.zeros((height, width), np.uint8), resolution)


def _sample(
    builder: SampleBuilder,
    source: np.ndarray,
    target: np.ndarray,
    kind: str,
    image_id: str,
    captions: dict[str, str],
    extra: dict[str, Any],
) -> Sample:
    caption = enhancement_caption(base_caption(captions, image_id, "a photo"), kind)
    return builder.sample(render(kind, builder.key), caption, {"kind": kind, **extra}, source, target)


def render_pair_sample(
    record: PairRecord, config: EnhancementConfig, resolution: int, captions: dict[str, str]
) -> Sample | Drop:
    """A dataset pair, cropped (or resized) the same way on both sides."""
    generator = enhancement_generator(config, resolution, "dataset", kind=record.kind)
    builder = SampleBuilder(record, Task.ENHANCEMENT, generator)
    degraded = builder.load(record.degraded_path)
    if isinstance(degraded, Drop):
        return degraded
    clean = builder.load(record.clean_path)
    if isinstance(clean, Drop):
        return clean
    if degraded.shape != clean.shape:
        return builder.drop(
            "size_mismatch",
            f"{record.degraded_path} is {degraded.shape[1]}x{degraded.shape[0]}, "
            f"{record.clean_path} is {clean.shape[1]}x{clean.shape[0]}",
        )
    window = patch_window(*clean.shape[:2], resolution, config.patch, seeded_rng(builder.key))
    return _sample(
        builder,
        window.apply(degraded),
        window.apply(clean),
        record.kind,
        record.image_id,
        captions,
        {"synthetic": False, "window": window.as_list()},
    )


def render_synthetic_sample(
    record: CleanImageRecord, config: EnhancementConfig, resolution: int, captions: dict[str, str]
) -> Sample | Drop:
    """A clean photo, squared and resized, against its synthetically degraded copy."""
    generator = enhancement_generator(config, resolution, "synthetic", degradation=record.degradation)
    builder = SampleBuilder(record, Task.ENHANCEMENT, generator)
    if record.degradation not in TASK_OF:
        return builder.drop("unknown_degradation", record.degradation)
    image = builder.load(record.image_path)
    if isinstance(image, Drop):
        return image
    window = window_around_mask(np.zeros(image.shape[:2], np.uint8), resolution)
    clean = window.apply(image)
    degraded, params = degrade(clean, record.degradation, seeded_rng(builder.key))
    return _sample(
        builder,
        degraded,
        clean,
        TASK_OF[record.degradation],
        record.image_id,
        captions,
        {"synthetic": True, "degradation": record.degradation, "params": params, "window": window.as_list()},
    )
