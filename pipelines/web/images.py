"""Checking downloaded bytes: they must decode as an image of sane size, whatever the headers said."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from ieiw.pipelines.web.fetcher import FetchError
from ieiw.storage import fs

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


@dataclass
class CheckedImage:
    format: str
    width: int
    height: int


def check_image(data: bytes, max_pixels: int, min_side: int = 1) -> CheckedImage:
    """Decode ``data`` fully; raise FetchError (not_an_image, decompression_bomb, truncated_image, ...)."""
    # Pillow's own guard warns above MAX_IMAGE_PIXELS; the header check below makes that limit (or a
    # lower one) an error before any pixel is decoded, without touching the process-wide warning filters.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > limit:
                raise FetchError("decompression_bomb", f"{width}x{height} exceeds {limit} pixels")
            if image.format not in EXTENSIONS:
                raise FetchError("unsupported_image_format", str(image.format))
            image.load()
            fmt = image.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise FetchError("decompression_bomb", str(error)) from error
    except UnidentifiedImageError as error:
        raise FetchError("not_an_image", _sniff(data)) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        reason = "truncated_image" if "truncat" in str(error).lower() else "corrupt_image"
        raise FetchError(reason, str(error)) from error
    if min(width, height) < min_side:
        raise FetchError("image_too_small", f"{width}x{height} < {min_side} px")
    return CheckedImage(fmt, width, height)


def load_rgb(path: str, max_side: int | None = None) -> np.ndarray:
    """A cached image (a local path or a URL on the build's store) as an HxWx3 uint8 RGB array,
    downscaled to ``max_side`` if given."""
    with Image.open(io.BytesIO(fs.read_bytes(path))) as image:
        image.seek(0)
        rgb = image.convert("RGB")
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(rgb)


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML page"
    if head.startswith((b"{", b"[")):
        return "JSON"
    return f"{len(data)} bytes starting {data[:8]!r}"


def write_whole(url: str, data: bytes) -> None:
    """Write ``url`` so that a reader sees all of it or nothing (a killed process leaves no part). On an
    object store that is its atomic PUT; locally a temporary file renamed, not synced to disk: what the
    crawl keeps is checked when it is used again (:meth:`ImageCache.holds`), and lost after a crash of the
    machine it is only fetched again."""
    filesystem, path = fs.get_fs(url)
    if not fs.is_local(filesystem):
        fs.write_bytes_atomic(url, data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = fs.temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


class ImageCache:
    """Content-addressed files ``<root>/<aa>/<sha256>.<ext>`` on any store (a local folder, an fsspec
    URL every worker reaches), each written whole (:func:`write_whole`)."""

    def __init__(self, root: str) -> None:
        self.root = str(root)

    def path_for(self, sha256: str, ext: str) -> str:
        return fs.join(self.root, sha256[:2], f"{sha256}.{ext}")

    def put(self, data: bytes, fmt: str) -> tuple[str, str]:
        """Store ``data``; returns (sha256, its path or URL). Existing content is not rewritten."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha256, EXTENSIONS.get(fmt, "img"))
        if not fs.exists(path):
            write_whole(path, data)
        return sha256, path

    @staticmethod
    def holds(path: str | None, sha256: str | None) -> bool:
        """The image is there, whole: on an object store it exists (a PUT is all or nothing); a local
        file must still hash to its name (it was not synced to disk when written)."""
        if not path:
            return False
        filesystem, local = fs.get_fs(str(path))
        if not fs.is_local(filesystem):
            return filesystem.exists(local)
        try:
            with open(local, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest() == sha256
        except OSError:
            return False
