"""Encoding and decoding of images as they are stored in shards."""

from __future__ import annotations

import io
from typing import Literal

import numpy as np
from PIL import Image

ImageFormat = Literal["png", "jpg", "webp"]
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def encode_image(array: np.ndarray, fmt: ImageFormat = "png", quality: int = 95) -> bytes:
    """Encode an HxWx3 (or HxW) ``uint8`` array."""
    if array.dtype != np.uint8:
        raise ValueError(f"images are stored as uint8, got {array.dtype}")
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt in ("jpg", "webp") else {"compress_level": 1}
    Image.fromarray(array).save(buffer, format=_PIL_FORMAT[fmt], **options)
    return buffer.getvalue()


def decode_image(data: bytes, mode: str = "RGB") -> np.ndarray:
    """Decode image bytes to a ``uint8`` array in ``mode`` (``RGB`` or ``L``)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert(mode))
