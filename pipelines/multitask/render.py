"""Pure image operations of the multi-task renderers: square crops, circles, colour overlays.

The colours, radius and opacity come from :mod:`ieiw.storage.visual_prompts`, which the decoders in
``quality/task_decoders`` import too, so what is drawn here is what is read back there.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ieiw.storage.visual_prompts import COLOR_NAMES, MIN_CONTRAST, color_rgb, overlay

SUBPIXEL_BITS = 4  # cv2 drawing shift: circle centres at 1/16 px


class ImageLoadError(Exception):
    """An input image is missing or unreadable; ``reason`` is the drop slug."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def load_rgb(path: str) -> np.ndarray:
    """Read an image fully as RGB ``uint8`` (a truncated file fails here, not later)."""
    if not os.path.exists(path):
        raise ImageLoadError("missing_image", path)
    try:
        with Image.open(path) as image:
            image.load()
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageLoadError("corrupt_image", f"{path}: {error}") from error


def seeded_rng(key: str) -> np.random.Generator:
    """The generator a sample's random choices come from: a function of its key only."""
    return np.random.default_rng(int(key[:16], 16))


def crop_square(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The ``side`` x ``side`` window at (x0, y0); parts outside the image are black."""
    height, width = image.shape[:2]
    out = np.zeros((side, side, *image.shape[2:]), dtype=image.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side, width), min(y0 + side, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def resize_square(image: np.ndarray, resolution: int, nearest: bool = False) -> np.ndarray:
    """Resize a square image (area averaging when shrinking, nearest for label masks)."""
    if image.shape[0] == resolution and image.shape[1] == resolution:
        return image
    if nearest:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if image.shape[0] > resolution else cv2.INTER_LINEAR
    return cv2.resize(image, (resolution, resolution), interpolation=interpolation)


class SquareWindow:
    """An integer square window of an image and the map from image to rendered coordinates."""

    def __init__(self, x0: int, y0: int, side: int, resolution: int) -> None:
        self.x0, self.y0, self.side, self.resolution = x0, y0, max(1, side), resolution
        self.scale = resolution / self.side

    def point(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel coordinates (pixel centres at integers) -> rendered coordinates."""
        return ((x - self.x0 + 0.5) * self.scale - 0.5, (y - self.y0 + 0.5) * self.scale - 0.5)

    def apply(self, image: np.ndarray, nearest: bool = False) -> np.ndarray:
        return resize_square(crop_square(image, self.x0, self.y0, self.side), self.resolution, nearest)

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.side]


def window_around_box(box: tuple[float, float, float, float], margin: float, resolution: int) -> SquareWindow:
    """A square window centred on a person box, its longer side plus ``margin`` of it on each side."""
    x, y, w, h = box
    side = int(np.ceil(max(w, h) * (1.0 + 2.0 * margin)))
    cx, cy = x + w / 2.0, y + h / 2.0
    return SquareWindow(int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side, resolution)


def window_around_mask(mask: np.ndarray, resolution: int) -> SquareWindow:
    """The largest square inside the image, slid to centre the mask's centroid where it can."""
    height, width = mask.shape[:2]
    side = min(height, width)
    ys, xs = np.nonzero(mask)
    cx, cy = (float(xs.mean()), float(ys.mean())) if len(xs) else (width / 2.0, height / 2.0)
    x0 = int(np.clip(round(cx - side / 2.0), 0, width - side))
    y0 = int(np.clip(round(cy - side / 2.0), 0, height - side))
    return SquareWindow(x0, y0, side, resolution)


def letterbox_window(height: int, width: int, resolution: int) -> SquareWindow:
    """The square that holds the whole image, centred (black bars on the short side)."""
    side = max(height, width)
    return SquareWindow((width - side) // 2, (height - side) // 2, side, resolution)


def neighbourhood_color(image: np.ndarray, x: float, y: float, radius: float) -> np.ndarray:
    """The mean colour around (x, y), ``1.5 * radius`` either side."""
    reach = max(1, int(round(1.5 * radius)))
    xi, yi = int(round(x)), int(round(y))
    patch = image[max(0, yi - reach) : yi + reach + 1, max(0, xi - reach) : xi + reach + 1]
    return patch.reshape(-1, 3).mean(axis=0) if patch.size else np.zeros(3)


def contrasting_colors(
    backgrounds: list[np.ndarray], rng: np.random.Generator, palette: tuple[str, ...] = COLOR_NAMES
) -> list[str]:
    """A distinct colour per background: random order, preferring ones far enough from the background."""
    order = [palette[i] for i in rng.permutation(len(palette))]
    chosen: list[str] = []
    for background in backgrounds:
        free = [c for c in order if c not in chosen]
        distance = {c: float(np.linalg.norm(np.asarray(color_rgb(c), float) - background)) for c in free}
        good = [c for c in free if distance[c] >= MIN_CONTRAST]
        chosen.append(good[0] if good else max(free, key=distance.__getitem__))
    return chosen


def draw_circles(
    image: np.ndarray, points: list[tuple[float, float]], colors: list[str], radius: float
) -> np.ndarray:
    """Filled circles of ``radius`` at sub-pixel centres, each in its named colour, without anti-aliasing."""
    out = np.ascontiguousarray(image.copy())
    factor = 1 << SUBPIXEL_BITS
    for (x, y), name in zip(points, colors, strict=True):
        cv2.circle(
            out,
            (int(round(x * factor)), int(round(y * factor))),
            int(round(radius * factor)),
            color_rgb(name),
            thickness=-1,
            lineType=cv2.LINE_8,
            shift=SUBPIXEL_BITS,
        )
    return out


def spread_points(
    candidates: list[int], positions: dict[int, tuple[float, float]], count: int, min_distance: float
) -> list[int]:
    """Up to ``count`` of ``candidates`` (in their order), each at least ``min_distance`` from those kept."""
    kept: list[int] = []
    for index in candidates:
        x, y = positions[index]
        if all((x - positions[k][0]) ** 2 + (y - positions[k][1]) ** 2 >= min_distance**2 for k in kept):
            kept.append(index)
            if len(kept) == count:
                break
    return kept


def mask_overlay(image: np.ndarray, mask: np.ndarray, color: str, alpha: float) -> np.ndarray:
    """The named colour over the mask with opacity ``alpha``."""
    return overlay(image, mask, color_rgb(color), alpha)
