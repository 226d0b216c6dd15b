"""Render then decode, over random images, joints, colours and transparencies (hypothesis).

The renderer picks colours that stand out from where they are drawn (``MIN_CONTRAST``); the
properties assume the same of the drawn colours, since a gray circle on a gray wall is unreadable.
"""

import cv2
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ieiw.pipelines.multitask.render import (
    contrasting_colors,
    draw_circles,
    mask_overlay,
    neighbourhood_color,
)
from ieiw.quality.task_decoders import decode_keypoint, decode_mask
from ieiw.quality.task_metrics import mask_iou
from ieiw.storage.visual_prompts import COLOR_NAMES, COLORS, MIN_CONTRAST, MIN_MASK_ALPHA, keypoint_radius

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow]
)


@st.composite
def images(draw, size: int):
    """Noise smoothed to a random degree, with a random tint and contrast."""
    seed = draw(st.integers(0, 2**32 - 1))
    sigma = draw(st.floats(0.0, 6.0))
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size, size, 3)).astype(np.float32)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
        image = (image - image.mean()) * draw(st.floats(1.0, 4.0)) + image.mean()
    gain = np.asarray(draw(st.tuples(*[st.floats(0.2, 1.0)] * 3)), np.float32)
    offset = np.asarray(draw(st.tuples(*[st.floats(0.0, 120.0)] * 3)), np.float32)
    return np.clip(image * gain + offset, 0, 255).astype(np.uint8)


def _far(color: str, background: np.ndarray) -> bool:
    return float(np.linalg.norm(np.asarray(COLORS[color], float) - background)) >= MIN_CONTRAST


@SETTINGS
@given(data=st.data(), resolution=st.sampled_from([64, 96, 128, 256]))
def test_circles_decode_to_their_joints_within_two_pixels(data, resolution):
    image = data.draw(images(resolution))
    radius = keypoint_radius(resolution)
    count = data.draw(st.integers(1, 5))
    low, high = radius + 1.0, resolution - 2.0 - radius
    points = data.draw(
        st.lists(st.tuples(st.floats(low, high), st.floats(low, high)), min_size=count, max_size=count)
    )
    for i, (x, y) in enumerate(points):  # circles of one sample never overlap (the renderer spreads them)
        assume(all(np.hypot(x - u, y - v) >= 2 * radius + 2 for u, v in points[:i]))
    colors = data.draw(st.lists(st.sampled_from(COLOR_NAMES), min_size=count, max_size=count, unique=True))
    assume(
        all(
            _far(c, neighbourhood_color(image, x, y, radius))
            for c, (x, y) in zip(colors, points, strict=True)
        )
    )
    edited = draw_circles(image, points, colors, radius)
    for (x, y), color in zip(points, colors, strict=True):
        found = decode_keypoint(edited, image, color, radius)
        assert found is not None, color
        assert np.hypot(found[0] - x, found[1] - y) <= 2.0
    unused = [c for c in COLOR_NAMES if c not in colors]
    assert all(decode_keypoint(edited, image, c, radius) is None for c in unused)


@SETTINGS
@given(data=st.data())
def test_renderer_colours_always_decode(data):
    """With the renderer's own colour choice, no assumption about the image is needed."""
    size = 96
    image = data.draw(images(size))
    radius = keypoint_radius(size)
    points = [(20.0, 20.0), (70.0, 30.0), (30.0, 72.0), (72.0, 72.0)]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    colors = contrasting_colors([neighbourhood_color(image, x, y, radius) for x, y in points], rng)
    edited = draw_circles(image, points, colors, radius)
    for (x, y), color in zip(points, colors, strict=True):
        found = decode_keypoint(edited, image, color, radius)
        assert found is not None and np.hypot(found[0] - x, found[1] - y) <= 2.0


@st.composite
def masks(draw, size: int):
    """An ellipse, a rotated rectangle or a polygon, at least a few percent of the image."""
    mask = np.zeros((size, size), np.uint8)
    shape = draw(st.sampled_from(["ellipse", "rectangle", "polygon"]))
    cx, cy = draw(st.floats(0.25 * size, 0.75 * size)), draw(st.floats(0.25 * size, 0.75 * size))
    a, b = draw(st.floats(0.12 * size, 0.3 * size)), draw(st.floats(0.12 * size, 0.3 * size))
    angle = draw(st.floats(0, 180))
    if shape == "ellipse":
        cv2.ellipse(mask, (int(cx), int(cy)), (int(a), int(b)), angle, 0, 360, 255, -1)
    elif shape == "rectangle":
        box = cv2.boxPoints(((cx, cy), (2 * a, 2 * b), angle)).astype(np.int32)
        cv2.fillPoly(mask, [box], 255)
    else:
        corners = draw(st.integers(5, 9))
        angles = np.sort(
            np.asarray(draw(st.lists(st.floats(0, 2 * np.pi), min_size=corners, max_size=corners)))
        )
        radii = np.asarray(draw(st.lists(st.floats(0.6, 1.0), min_size=corners, max_size=corners)))
        polygon = np.stack([cx + a * radii * np.cos(angles), cy + b * radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [polygon.astype(np.int32)], 255)
    assume(np.count_nonzero(mask) >= 0.03 * mask.size)
    return mask


@SETTINGS
@given(data=st.data(), alpha=st.floats(MIN_MASK_ALPHA, 1.0), color=st.sampled_from(COLOR_NAMES))
def test_overlays_decode_to_their_masks(data, alpha, color):
    size = data.draw(st.sampled_from([64, 128]))
    image = data.draw(images(size))
    mask = data.draw(masks(size))
    assume(_far(color, image[mask > 0].mean(axis=0)))
    edited = mask_overlay(image, mask, color, alpha)
    assert mask_iou(decode_mask(edited, image, color, alpha), mask) >= 0.95
    assert not decode_mask(image, image, color, alpha).any()  # nothing drawn, nothing decoded
