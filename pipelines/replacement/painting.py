"""The interface of the generation backends: paint a reference object into a region."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

from ieiw.storage.config import model_ref, operational, precision


class PaintError(RuntimeError):
    """A backend could not paint one job (or a whole batch)."""


class PaintConfig(BaseModel):
    """``seamless_clone`` needs no weights; ``paint_by_example`` needs ``model`` (hub id or folder)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["seamless_clone", "paint_by_example"] = "seamless_clone"
    model: str | None = model_ref(None)
    device: str = operational("auto")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = precision("auto")
    resolution: int = 512
    steps: int = 50
    guidance_scale: float = 5.0
    batch_size: int = operational(4)
    mask_mode: Literal["box", "mask"] = "box"  # Paint-by-Example was trained on box-shaped masks
    window_scale: float = 2.0  # the square window painted around a region, in region sizes
    # A region wider (or taller) than the square window can be, the image's short side: ``letterbox``
    # paints a window spanning it, padded to a square; ``drop`` drops it as ``region_wider_than_window``.
    wide_regions: Literal["letterbox", "drop"] = "letterbox"
    dilation: int = 8
    seed: int = 0
    inpaint_radius: int = 5  # seamless_clone: how the original object is cleared first
    fit: float = 0.95  # seamless_clone: the reference fills this share of the region's box
    clone_margin: float = 0.08  # seamless_clone: the reference's surroundings cloned with it, in its sizes


@dataclass
class PaintJob:
    """One region to repaint with one reference object."""

    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW bool, the region
    bbox: tuple[int, int, int, int]  # x, y, w, h of the region
    reference: np.ndarray  # hxwx3 uint8 crop around the reference object
    reference_mask: np.ndarray  # hxw bool, the reference object inside its crop
    seed: int


@dataclass
class Painted:
    target: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW uint8 0/255: where the target may differ from the source


@dataclass
class Refused:
    """A job a painter will not paint, with the reason its drop gets (a slug) and why."""

    reason: str
    detail: str


class Painter(Protocol):
    """``backend`` and ``model`` (its identity by content or hub revision, never a path) name the
    painter in each sample (the settings that shape it are read from the config into its key)."""

    backend: str
    model: str | None

    def paint(self, jobs: list[PaintJob]) -> list[Painted | Refused]: ...


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A bool mask grown by ``pixels``."""
    if pixels <= 0:
        return mask.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def build_painter(config: PaintConfig) -> Painter:
    if config.backend == "seamless_clone":
        from ieiw.pipelines.replacement.classical import SeamlessClonePainter

        return SeamlessClonePainter(config)
    from ieiw.pipelines.replacement.paint_by_example import PaintByExamplePainter

    if not config.model:
        raise ValueError("paint.backend 'paint_by_example' needs paint.model: a hub id or a local folder")
    return PaintByExamplePainter(config)
