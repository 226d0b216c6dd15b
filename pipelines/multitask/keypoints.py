"""Keypoint detection as an edit: crop around one person, circle 1 to 5 of their joints in named colours."""

from __future__ import annotations

from typing import Any

from ieiw.pipelines.multitask.captions import base_caption, keypoint_caption
from ieiw.pipelines.multitask.config import KeypointConfig
from ieiw.pipelines.multitask.keypoint_sources import BOX_AREA_SHARE, canonical_joint, joint_phrase
from ieiw.pipelines.multitask.records import KeypointRecord
from ieiw.pipelines.multitask.render import (
    contrasting_colors,
    draw_circles,
    neighbourhood_color,
    seeded_rng,
    spread_points,
    window_around_box,
)
from ieiw.pipelines.multitask.samples import SampleBuilder
from ieiw.pipelines.multitask.templates import keypoint_instruction
from ieiw.storage.schema import Drop, GeneratorInfo, Sample, Task
from ieiw.storage.visual_prompts import keypoint_radius

GENERATOR = "multitask"


def keypoint_generator(config: KeypointConfig, resolution: int) -> GeneratorInfo:
    return GeneratorInfo(
        name=GENERATOR,
        backend="render",
        settings={
            "task": "keypoint",
            "resolution": resolution,
            "radius": keypoint_radius(resolution),
            "crop_margin": config.crop_margin,
            "min_joints": config.min_joints,
            "max_joints": config.max_joints,
            "include_occluded": config.include_occluded,
        },
    )


def render_keypoint_sample(
    record: KeypointRecord, config: KeypointConfig, resolution: int, captions: dict[str, str]
) -> Sample | Drop:
    """One person's crop with circles on a few of their joints, or a drop saying why not."""
    builder = SampleBuilder(record, Task.KEYPOINT, keypoint_generator(config, resolution))
    image = builder.load(record.image_path)
    if isinstance(image, Drop):
        return image
    height, width = image.shape[:2]
    outside = [
        record.joint_names[i]
        for i, (x, y, v) in enumerate(record.joints)
        if v > 0 and not (0 <= x < width and 0 <= y < height)
    ]
    if outside:
        return builder.drop(
            "keypoint_outside_image", f"{', '.join(outside)} outside the {width}x{height} image"
        )
    window = window_around_box(record.box, config.crop_margin, resolution)
    radius = keypoint_radius(resolution)
    wanted = 1 if config.include_occluded else 2
    positions = {i: window.point(x, y) for i, (x, y, v) in enumerate(record.joints) if v >= wanted}
    edge = radius + 1.0
    inside = [
        i
        for i, (u, v) in positions.items()
        if edge <= u <= resolution - 1 - edge and edge <= v <= resolution - 1 - edge
    ]
    if len(inside) < config.min_joints:
        return builder.drop(
            "too_few_joints", f"{len(inside)} visible joints fit the crop, {config.min_joints} needed"
        )
    rng = seeded_rng(builder.key)
    count = int(rng.integers(config.min_joints, config.max_joints + 1))
    order = [inside[i] for i in rng.permutation(len(inside))]
    picked = spread_points(order, positions, count, 2.0 * radius + 2.0)
    if len(picked) < config.min_joints:
        return builder.drop("too_few_joints", "joints too close together")
    source = window.apply(image)
    points = [positions[i] for i in picked]
    colors = contrasting_colors([neighbourhood_color(source, x, y, radius) for x, y in points], rng)
    target = draw_circles(source, points, colors, radius)
    phrases = [joint_phrase(record.joint_names[i]) for i in picked]
    instruction = keypoint_instruction(builder.key, list(zip(phrases, colors, strict=True)))
    base = base_caption(captions, record.image_id, "a photo of a person")
    area = (record.area if record.area else BOX_AREA_SHARE * record.box[2] * record.box[3]) * window.scale**2
    joints: list[dict[str, Any]] = [
        {
            "name": canonical_joint(record.joint_names[i]),
            "label": record.joint_names[i],
            "phrase": phrase,
            "x": round(x, 3),
            "y": round(y, 3),
            "color": color,
        }
        for i, phrase, (x, y), color in zip(picked, phrases, points, colors, strict=True)
    ]
    bx, by = window.point(record.box[0], record.box[1])
    extra = {
        "joints": joints,
        "radius": radius,
        "area": round(float(area), 2),
        "box": [
            round(bx, 2),
            round(by, 2),
            round(record.box[2] * window.scale, 2),
            round(record.box[3] * window.scale, 2),
        ],
        "window": window.as_list(),
        "joint_names": list(record.joint_names),
    }
    return builder.sample(instruction, keypoint_caption(base, colors), extra, source, target)
