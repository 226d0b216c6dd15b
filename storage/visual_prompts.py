"""The visual vocabulary of the multi-task samples: named colours and render parameters.

The renderers (``pipelines/multitask``) draw with these values and the decoders
(``quality/task_decoders``) read the answer back with them, so both import this one module.
It sits in ``storage/`` because both layers may import storage; it depends on numpy only.
"""

from __future__ import annotations

import numpy as np

# The paper's palette: a distinct named colour per asked joint or mask. Order matters for nothing.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "gray": (128, 128, 128),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Keypoints: a filled circle whose radius scales with the resolution, 10 px at 256.
KEYPOINT_RADIUS_AT_256 = 10.0
# A decoded blob counts only if it covers at least this share of the drawn circle's area.
KEYPOINT_MIN_BLOB_SHARE = 0.3
# A pixel "has the colour" within this Euclidean RGB distance of it.
COLOR_TOLERANCE = 80.0
# A pixel "was edited" when some channel moved by more than this from the source.
CHANGE_THRESHOLD = 24
# The renderer prefers colours at least this far (RGB distance) from the joint's surroundings.
MIN_CONTRAST = 150.0

# Segmentation: the colour laid over the mask with this opacity (semi-transparent, as the paper preferred).
DEFAULT_MASK_ALPHA = 0.5
MIN_MASK_ALPHA = 0.2
# Where source and colour are closer than this, a pixel cannot tell overlay from no overlay by itself.
AMBIGUOUS_DISTANCE = 40.0


def color_rgb(name: str) -> tuple[int, int, int]:
    """The RGB triple of a named colour; a clear error for an unknown name."""
    try:
        return COLORS[name]
    except KeyError:
        raise KeyError(f"unknown colour {name!r}; known: {', '.join(COLOR_NAMES)}") from None


def keypoint_radius(resolution: int) -> float:
    """The circle radius at a square render resolution (10 px at 256)."""
    return KEYPOINT_RADIUS_AT_256 * resolution / 256.0


def color_distance(image: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Per-pixel Euclidean RGB distance of an HxWx3 image to one colour, as float32 HxW."""
    diff = image.astype(np.float32) - np.asarray(rgb, dtype=np.float32)
    return np.sqrt((diff * diff).sum(axis=-1))


def overlay(image: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], alpha: float) -> np.ndarray:
    """Lay ``rgb`` over the pixels of ``mask`` (HxW, nonzero = inside) with opacity ``alpha``."""
    out = image.astype(np.float32)
    inside = mask > 0
    out[inside] = (1.0 - alpha) * out[inside] + alpha * np.asarray(rgb, dtype=np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
