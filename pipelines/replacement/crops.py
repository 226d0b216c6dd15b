"""Masked crops with context: what the object database embeds and what Paint-by-Example is shown."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

GREY = 127


class CropConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    context: float = 0.1  # the box grows by this share of its size on each side
    background_fade: float = 0.6  # 0 keeps the context as is, 1 paints it grey


@dataclass
class Crop:
    image: np.ndarray  # hxwx3 uint8, context faded toward grey
    mask: np.ndarray  # hxw bool, the object inside the crop


def expand_box(
    bbox: tuple[int, int, int, int], context: float, height: int, width: int
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the box grown by ``context`` on each side, clipped to the image."""
    x, y, w, h = bbox
    dx, dy = int(round(w * context)), int(round(h * context))
    return max(0, x - dx), max(0, y - dy), min(width, x + w + dx), min(height, y + h + dy)


def masked_crop(
    image: np.ndarray, mask: np.ndarray, bbox: tuple[int, int, int, int], config: CropConfig
) -> Crop:
    x0, y0, x1, y1 = expand_box(bbox, config.context, *mask.shape)
    pixels = image[y0:y1, x0:x1].astype(np.float32)
    inside = mask[y0:y1, x0:x1]
    faded = pixels * (1.0 - config.background_fade) + GREY * config.background_fade
    out = np.where(inside[..., None], pixels, faded)
    return Crop(np.clip(out, 0, 255).astype(np.uint8), inside.copy())


def pad_square(image: np.ndarray, value: int = GREY) -> np.ndarray:
    """Pad to a square so a centre-cropping preprocessor never cuts the object."""
    height, width = image.shape[:2]
    side = max(height, width)
    out = np.full((side, side, 3), value, np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    out[top : top + height, left : left + width] = image
    return out
