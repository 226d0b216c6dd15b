"""Aspect-ratio buckets: train above 256 px on photos of any shape without squashing or square crops.

:meth:`Buckets.make` gives a few fixed shapes ``(height, width)`` of about ``resolution``² pixels, each
side a multiple of ``step``, no wider or taller than ``max_aspect``. Each sample goes to the shape whose
aspect ratio is closest to its source's (compared on a log scale), is resized with one scale for both
axes until it covers that shape, and cropped to it; source and target get the same resize, crop and
flip (:func:`crop_pair`; a preference pair's rejected edit too, :func:`crop_alike`). A batch holds one
shape (:meth:`ieiw.model.data.ShardStream`), so the UNet sees full batches of equal tensors.

The cropped aspect ratio is the bucket's: for a source whose own aspect ratio lies within the buckets'
range it differs from the source's by at most half the largest gap between neighbouring shapes
(:attr:`Buckets.aspect_step`, in log aspect ratio); the pixels themselves are never stretched.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

Shape = tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Buckets:
    """The shapes of one run, ordered from the tallest to the widest."""

    shapes: tuple[Shape, ...]
    step: int

    @classmethod
    def make(cls, resolution: int, step: int = 64, max_aspect: float = 2.0) -> Buckets:
        """Shapes of at most (and about) ``resolution``² pixels, sides multiples of ``step``."""
        if step <= 0 or resolution % step:
            raise ValueError(f"the resolution {resolution} must be a multiple of the bucket step {step}")
        if max_aspect < 1:
            raise ValueError("max_aspect is at least 1")
        area = resolution * resolution
        shapes = set()
        for width in range(step, int(resolution * math.sqrt(max_aspect)) + step, step):
            height = area // width // step * step
            if height >= step and max(width / height, height / width) <= max_aspect + 1e-9:
                shapes.add((height, width))
        shapes.add((resolution, resolution))
        return cls(tuple(sorted(shapes, key=lambda s: s[1] / s[0])), step)

    @property
    def aspects(self) -> list[float]:
        """Each shape's width / height."""
        return [w / h for h, w in self.shapes]

    @property
    def aspect_step(self) -> float:
        """The largest gap between neighbouring shapes in log aspect ratio (0 for one shape)."""
        logs = [math.log(a) for a in self.aspects]
        return max((b - a for a, b in zip(logs, logs[1:], strict=False)), default=0.0)

    def closest(self, width: int, height: int) -> Shape:
        """The shape whose aspect ratio is nearest ``width / height`` (on a log scale)."""
        target = math.log(width / height)
        return min(self.shapes, key=lambda s: abs(math.log(s[1] / s[0]) - target))

    def to_json(self) -> list[list[int]]:
        return [list(s) for s in self.shapes]


def image_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of an encoded image, from its header only (nothing is decoded)."""
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def cover_size(width: int, height: int, shape: Shape) -> tuple[int, int]:
    """``(width, height)`` after one scale for both axes that makes the image cover ``shape``."""
    bh, bw = shape
    scale = max(bw / width, bh / height)
    return max(bw, round(width * scale)), max(bh, round(height * scale))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` resized to ``size`` = ``(width, height)`` (bicubic; unchanged when already that size)."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize(tuple(size), Image.Resampling.BICUBIC))


def crop_pair(
    src: np.ndarray, tgt: np.ndarray, shape: Shape, flip: bool, rng: random.Random | None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Source and target resized alike to cover ``shape``, cropped to it at one place (random with
    ``rng``, centred without) and flipped alike; with SDXL's size ids ``(original height, original
    width, crop top, crop left, height, width)``, the crop's place given in the (flipped) resized image."""
    (src, tgt), ids = crop_alike(src, [tgt], shape, flip, rng)
    return src, tgt, ids


def crop_alike(
    src: np.ndarray, others: list[np.ndarray], shape: Shape, flip: bool, rng: random.Random | None
) -> tuple[list[np.ndarray], list[int]]:
    """:func:`crop_pair` of a source and any number of images of it (a target; a preference pair's
    chosen and rejected edits): every one takes the source's size, crop and flip."""
    height, width = src.shape[:2]
    size = cover_size(width, height, shape)
    images = [resize(image, size) for image in (src, *others)]  # each takes the source's size
    bh, bw = shape
    if rng is None:
        top, left = (size[1] - bh) // 2, (size[0] - bw) // 2
    else:
        top, left = rng.randint(0, size[1] - bh), rng.randint(0, size[0] - bw)
    images = [image[top : top + bh, left : left + bw] for image in images]
    if flip and rng is not None and rng.random() < 0.5:
        images = [image[:, ::-1] for image in images]
        left = size[0] - left - bw
    return images, [height, width, top, left, bh, bw]
