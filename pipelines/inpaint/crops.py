"""Square windows around masks, resized to one size, so images of any size inpaint in real batches.

lama-cleaner's ``crop`` strategy inpaints a box around the mask grown by a margin instead of the whole
image. Here the box is made square, at least ``window`` pixels (more context at full resolution for a
small mask) and at most the image's long side; the inpainter resizes it to ``window`` x ``window``
on its device (:class:`ieiw.pipelines.inpaint.lama.LamaInpainter`), so every window of every image has
one shape and a batch of them is one network call. The result is resized back and pasted inside the
mask only, so every pixel outside the mask keeps the source's value. A square reaching past the
image's border (an image narrower than the window) is filled by mirroring the image (as LaMa's own
padding does), with the mask empty there. This module is the geometry (numpy only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    """A ``side`` x ``side`` square at ``(x0, y0)`` in image coordinates (it may reach past the borders)."""

    x0: int
    y0: int
    side: int


def _start(centre: float, side: int, length: int) -> int:
    """Where a ``side`` window centred at ``centre`` starts, shifted inside ``length`` where it fits."""
    if side >= length:
        return (length - side) // 2
    return int(np.clip(round(centre - side / 2), 0, length - side))


def mask_window(mask: np.ndarray, margin: int, window: int) -> Window | None:
    """The square around the mask's pixels grown by ``margin`` (None for an empty mask)."""
    ys, xs = np.nonzero(mask > 127)
    if len(xs) == 0:
        return None
    height, width = mask.shape[:2]
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1
    side = max(x1 - x0, y1 - y0) + 2 * margin
    side = min(max(side, window), max(height, width))
    return Window(_start((x0 + x1) / 2, side, width), _start((y0 + y1) / 2, side, height), side)


def cut(array: np.ndarray, win: Window, mode: str = "symmetric") -> np.ndarray:
    """The window's pixels (``side`` x ``side``); outside the image: mirrored (``symmetric``) or zero
    (``constant``)."""
    height, width = array.shape[:2]
    left, top = max(0, -win.x0), max(0, -win.y0)
    right, bottom = max(0, win.x0 + win.side - width), max(0, win.y0 + win.side - height)
    inside = array[max(0, win.y0) : win.y0 + win.side, max(0, win.x0) : win.x0 + win.side]
    if not (left or top or right or bottom):
        return np.ascontiguousarray(inside)
    pads = [(top, bottom), (left, right)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(inside, pads, mode=mode)


def paste_window(image: np.ndarray, mask: np.ndarray, win: Window, filled: np.ndarray) -> np.ndarray:
    """``image`` with the mask's pixels taken from ``filled`` (the inpainted window, ``side`` x ``side``)."""
    if filled.shape[:2] != (win.side, win.side):
        raise ValueError(f"the filled window is {filled.shape[:2]}, not {win.side} x {win.side}")
    height, width = image.shape[:2]
    ix0, iy0 = max(0, win.x0), max(0, win.y0)
    ix1, iy1 = min(width, win.x0 + win.side), min(height, win.y0 + win.side)
    out = image.copy()
    patch = filled[iy0 - win.y0 : iy1 - win.y0, ix0 - win.x0 : ix1 - win.x0]
    inside = mask[iy0:iy1, ix0:ix1] > 127
    out[iy0:iy1, ix0:ix1][inside] = patch[inside]
    return out
