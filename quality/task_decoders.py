"""Read the answer back out of an edited image: a keypoint's position, a mask's pixels.

The decoders invert the multi-task renderers with the same colour table and parameters
(:mod:`ieiw.storage.visual_prompts`): the centre of the blob of the asked colour for a keypoint, the
pixels moved toward the asked colour for a mask. :mod:`ieiw.quality.task_evaluation` scores what they read.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from ieiw.storage.visual_prompts import (
    AMBIGUOUS_DISTANCE,
    CHANGE_THRESHOLD,
    COLOR_TOLERANCE,
    KEYPOINT_MIN_BLOB_SHARE,
    MIN_MASK_ALPHA,
    color_distance,
    color_rgb,
)

KEYPOINT_MAX_BLOB_SHARE = 4.0  # a blob over 4x the circle's area is not a circle


def _changed(output: np.ndarray, source: np.ndarray, threshold: int = CHANGE_THRESHOLD) -> np.ndarray:
    return np.abs(output.astype(np.int16) - source.astype(np.int16)).max(axis=-1) > threshold


def decode_keypoint(
    output: np.ndarray, source: np.ndarray, color: str, radius: float, tolerance: float = COLOR_TOLERANCE
) -> tuple[float, float] | None:
    """The centre of the circle of ``color`` drawn into ``output`` over ``source``; None when there is none.

    A pixel belongs to a blob when it is near the colour and was edited; the blob closest in size to
    the drawn circle (between 0.3x and 4x its area) wins, its holes are filled, its centroid returned.
    """
    candidate = (color_distance(output, color_rgb(color)) <= tolerance) & _changed(output, source)
    if not candidate.any():
        return None
    count, labels, stats, _ = cv2.connectedComponentsWithStats(candidate.astype(np.uint8), connectivity=8)
    circle = math.pi * radius * radius
    areas = stats[1:, cv2.CC_STAT_AREA]
    fits = [
        i + 1
        for i, a in enumerate(areas)
        if KEYPOINT_MIN_BLOB_SHARE * circle <= a <= KEYPOINT_MAX_BLOB_SHARE * circle
    ]
    if not fits:
        return None
    best = min(fits, key=lambda i: abs(math.log(stats[i, cv2.CC_STAT_AREA] / circle)))
    x, y, w, h = (
        int(stats[best, k])
        for k in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT)
    )
    blob = ndimage.binary_fill_holes(labels[y : y + h, x : x + w] == best)
    ys, xs = np.nonzero(blob)
    return float(xs.mean() + x), float(ys.mean() + y)


def decode_keypoints(
    output: np.ndarray, source: np.ndarray, joints: list[dict[str, Any]], radius: float
) -> list[tuple[float, float] | None]:
    """One decoded centre (or None) per asked joint, each looked up by its colour."""
    return [decode_keypoint(output, source, joint["color"], radius) for joint in joints]


def _enclosed(inside: np.ndarray) -> np.ndarray:
    """Pixels outside ``inside`` that it surrounds completely (holes, not reachable from the border)."""
    outside = np.where(inside, 0, 255).astype(np.uint8)
    padded = cv2.copyMakeBorder(outside, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=255)
    reach = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(padded, reach, (0, 0), 128)
    return padded[1:-1, 1:-1] == 255


def decode_mask(
    output: np.ndarray, source: np.ndarray, color: str, alpha: float | None = None, smooth: int = 3
) -> np.ndarray:
    """The pixels ``output`` moved from ``source`` toward ``color`` (HxW ``uint8`` 0/255).

    Per pixel, the move ``output - source`` is projected on ``color - source``: the share of the way
    to the colour estimates the opacity, and the pixel is inside when that share passes half the
    asked opacity and the move points at the colour. Pixels already about that colour cannot tell
    by themselves; their neighbours vote, and those the decoded mask surrounds are inside.
    ``smooth`` is a median filter size (0 for none).
    """
    out = output.astype(np.float32)
    src = source.astype(np.float32)
    toward = np.asarray(color_rgb(color), np.float32) - src
    moved = out - src
    reach = np.sqrt((toward * toward).sum(axis=-1))
    share = (moved * toward).sum(axis=-1) / np.maximum(reach * reach, 1e-6)
    across = np.sqrt(np.maximum((moved * moved).sum(axis=-1) - (share * reach) ** 2, 0.0))
    length = np.sqrt((moved * moved).sum(axis=-1))
    threshold = 0.5 * (alpha if alpha is not None else MIN_MASK_ALPHA)
    decided = reach >= AMBIGUOUS_DISTANCE
    inside = decided & (share >= threshold) & (across <= 0.5 * length + 20.0)
    undecided = ~decided
    if undecided.any():
        votes_in = cv2.boxFilter(inside.astype(np.float32), -1, (7, 7), normalize=False)
        votes = cv2.boxFilter(decided.astype(np.float32), -1, (7, 7), normalize=False)
        inside |= undecided & (votes_in > 0.5 * votes) & (votes > 0)
        inside |= undecided & _enclosed(inside)
    mask = inside.astype(np.uint8) * 255
    if smooth and smooth > 1:
        # the median removes specks and fills pinholes but also shaves corners and thin parts:
        # pixels with two or more inside neighbours (corners, edges, lines) are kept
        neighbours = cv2.boxFilter(inside.astype(np.float32), -1, (3, 3), normalize=False) - inside
        mask = np.maximum(
            cv2.medianBlur(mask, smooth), np.where(inside & (neighbours >= 2), 255, 0).astype(np.uint8)
        )
    return mask
