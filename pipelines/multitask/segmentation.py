"""Segmentation as an edit: a named colour laid semi-transparently over the asked class or referred object.

A configurable share of semantic samples names a class that is absent (target = source, empty
mask); gRefCOCO's no-target expressions become such negatives too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ieiw.pipelines.multitask.captions import base_caption, names_caption, segmentation_caption
from ieiw.pipelines.multitask.config import SegmentationConfig
from ieiw.pipelines.multitask.records import ReferringRecord, SemanticRecord
from ieiw.pipelines.multitask.render import (
    SquareWindow,
    contrasting_colors,
    letterbox_window,
    mask_overlay,
    seeded_rng,
    window_around_mask,
)
from ieiw.pipelines.multitask.samples import SampleBuilder
from ieiw.pipelines.multitask.segmentation_sources import IGNORE_LABEL
from ieiw.pipelines.multitask.templates import render
from ieiw.pipelines.sources.phrasecut import rasterize
from ieiw.storage.schema import Drop, GeneratorInfo, Sample, Task

GENERATOR = "multitask"
MIN_MASK_PIXELS = 16  # a referred object smaller than this at the render resolution is not worth asking for


def segmentation_generator(config: SegmentationConfig, resolution: int, kind: str) -> GeneratorInfo:
    return GeneratorInfo(
        name=GENERATOR,
        backend="render",
        settings={
            "task": "segmentation",
            "kind": kind,
            "resolution": resolution,
            "alpha": config.alpha,
            "negative_share": config.negative_share,
            "min_area_fraction": config.min_area_fraction,
        },
    )


def coco_segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, or RLE compressed or not) as an HxW ``uint8`` 0/255 mask."""
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise ValueError(f"RLE of size {segmentation['size']} for a {height}x{width} image")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {
                "size": [height, width],
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
            }
    else:
        raise ValueError(f"unknown segmentation of type {type(segmentation).__name__}")
    return (mask_utils.decode(rle) > 0).astype(np.uint8) * 255


def read_label_map(path: str) -> np.ndarray:
    """A label map as HxW integers, read without any colour conversion."""
    with Image.open(path) as image:
        image.load()
        labels = np.asarray(image)
    if labels.ndim != 2:
        raise ValueError(f"{path}: a label map has one channel, this one has shape {labels.shape}")
    return labels


def _sample(
    builder: SampleBuilder,
    source: np.ndarray,
    mask: np.ndarray,
    target_text: str,
    color: str,
    alpha: float,
    negative: bool,
    caption: str,
    extra: dict[str, Any],
) -> Sample:
    target = source.copy() if negative else mask_overlay(source, mask, color, alpha)
    return builder.sample(
        render("segmentation", builder.key, target=target_text, color=color),
        segmentation_caption(caption, color, negative),
        {"color": color, "alpha": alpha, "negative": negative, "target": target_text, **extra},
        source,
        target,
        mask,
    )


def _the(name: str) -> str:
    return name if name.lower().startswith(("the ", "a ", "an ")) else f"the {name}"


def render_semantic_sample(
    record: SemanticRecord, config: SegmentationConfig, resolution: int, captions: dict[str, str]
) -> Sample | Drop:
    """One class of a label map (or, for a share of samples, an absent class) as a colour overlay."""
    builder = SampleBuilder(record, Task.SEGMENTATION, segmentation_generator(config, resolution, "semantic"))
    image = builder.load(record.image_path)
    if isinstance(image, Drop):
        return image
    try:
        labels = read_label_map(record.label_path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return builder.drop("bad_label_map", str(error))
    if labels.shape != image.shape[:2]:
        return builder.drop(
            "label_size_mismatch",
            f"label map {labels.shape[1]}x{labels.shape[0]} for a {image.shape[1]}x{image.shape[0]} image",
        )
    values, counts = np.unique(labels, return_counts=True)
    share = {int(v): c / labels.size for v, c in zip(values, counts, strict=True) if int(v) != IGNORE_LABEL}
    present = sorted(v for v, s in share.items() if v in record.names and s >= config.min_area_fraction)
    if not present:
        return builder.drop(
            "no_labelled_class", f"no known class covers {config.min_area_fraction:.0%} of the image"
        )
    rng = seeded_rng(builder.key)
    absent = sorted(set(record.names) - set(share))
    negative = bool(absent) and rng.random() < config.negative_share
    present_names = [record.names[v] for v in present]
    caption = base_caption(captions, record.image_id, names_caption(present_names))
    if negative:
        label = absent[int(rng.integers(len(absent)))]
        window = window_around_mask(np.zeros(labels.shape, np.uint8), resolution)
        mask = np.zeros((resolution, resolution), np.uint8)
    else:
        label = present[int(rng.integers(len(present)))]
        full = (labels == label).astype(np.uint8) * 255
        window = window_around_mask(full, resolution)
        mask = window.apply(full, nearest=True)
        if np.count_nonzero(mask) < MIN_MASK_PIXELS:
            return builder.drop(
                "region_too_small", f"class {record.names[label]!r} mostly outside the square crop"
            )
    source = window.apply(image)
    color = _pick_color(source, mask, rng)
    name = record.names[label]
    return _sample(
        builder,
        source,
        mask,
        _the(name),
        color,
        config.alpha,
        negative,
        caption,
        {
            "kind": "semantic",
            "class_id": label,
            "class_name": name,
            "classes_present": present_names,
            "window": window.as_list(),
        },
    )


def _pick_color(source: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> str:
    inside = mask > 0
    background = source[inside].mean(axis=0) if inside.any() else source.reshape(-1, 3).mean(axis=0)
    return contrasting_colors([background], rng)[0]


def referring_mask(record: ReferringRecord, height: int, width: int) -> np.ndarray:
    """The union of the masks the expression refers to, at the image's size."""
    if record.polygons:
        return rasterize(record.polygons, width, height)
    mask = np.zeros((height, width), np.uint8)
    for segmentation in record.segmentations:
        mask |= coco_segmentation_mask(segmentation, height, width)
    return mask


def render_referring_sample(
    record: ReferringRecord, config: SegmentationConfig, resolution: int, captions: dict[str, str]
) -> Sample | Drop:
    """The referred objects under a colour (the whole image letterboxed, so 'the leftmost' stays true)."""
    builder = SampleBuilder(
        record, Task.SEGMENTATION, segmentation_generator(config, resolution, "referring")
    )
    if not record.sentences:
        return builder.drop("empty_phrase", f"ref {record.ref_id} has no expression")
    image = builder.load(record.image_path)
    if isinstance(image, Drop):
        return image
    height, width = image.shape[:2]
    if record.image_size is not None and tuple(record.image_size) != (width, height):
        return builder.drop(
            "annotation_size_mismatch",
            f"annotations for {record.image_size[0]}x{record.image_size[1]}, image is {width}x{height}",
        )
    try:
        full = referring_mask(record, height, width)
    except (TypeError, ValueError, IndexError) as error:
        return builder.drop("bad_polygon", f"ref {record.ref_id}: {error}")
    negative = record.no_target
    if not negative and not full.any():
        return builder.drop("empty_mask", f"ref {record.ref_id}: mask covers no pixel")
    window: SquareWindow = letterbox_window(height, width, resolution)
    mask = window.apply(full, nearest=True)
    if not negative and np.count_nonzero(mask) < MIN_MASK_PIXELS:
        return builder.drop(
            "region_too_small", f"ref {record.ref_id}: {np.count_nonzero(mask)} px at {resolution}"
        )
    rng = seeded_rng(builder.key)
    phrase = record.sentences[int(rng.integers(len(record.sentences)))]
    source = window.apply(image)
    color = _pick_color(source, mask, rng)
    caption = base_caption(captions, record.image_id, f"a photo with {_the(phrase)}")
    return _sample(
        builder,
        source,
        mask,
        _the(phrase),
        color,
        config.alpha,
        negative,
        caption,
        {"kind": "referring", "phrase": phrase, "category": record.category, "window": window.as_list()},
    )
