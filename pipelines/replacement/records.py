"""Source records of the replacement generator: an image and its candidate regions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from ieiw.pipelines.sources.drops import keyed_drop
from ieiw.storage.schema import Drop, Provenance, stable_key


class RegionDecodeError(ValueError):
    """A region's mask could not be decoded (bad RLE, unreadable PNG)."""


@dataclass
class Region:
    """One candidate region. Its mask is a COCO RLE, a PNG file, or an array (from a proposer)."""

    region_id: str
    label: str | None = None
    predicted_iou: float | None = None
    stability_score: float | None = None
    rle: dict | None = None
    mask_path: str | None = None
    mask_array: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def decode(self, height: int, width: int) -> np.ndarray:
        """The region as an HxW ``bool`` mask at the image's size."""
        if self.mask_array is not None:
            mask = np.asarray(self.mask_array).astype(bool)
        elif self.rle is not None:
            mask = decode_rle(self.rle).astype(bool)
        elif self.mask_path is not None:
            mask = _read_mask_png(self.mask_path)
        else:
            raise RegionDecodeError(f"region {self.region_id} has no mask")
        if mask.shape != (height, width):
            resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
            mask = resized.astype(bool)
        return mask


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed string counts or uncompressed list counts) with pycocotools."""
    try:
        size = [int(v) for v in rle["size"]]
        counts = rle["counts"]
        if isinstance(counts, list):
            encoded = mask_utils.frPyObjects({"size": size, "counts": counts}, size[0], size[1])
        else:
            encoded = {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return mask_utils.decode(encoded)
    except (KeyError, TypeError, ValueError, UnicodeEncodeError) as error:
        raise RegionDecodeError(f"bad RLE: {error}") from error


def encode_rle(mask: np.ndarray) -> dict:
    """A compact COCO RLE of a bool mask, JSON-ready (``counts`` as a string)."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def mask_region_id(prefix: str, mask: np.ndarray) -> str:
    """A region id from the mask's content (a hash of its COCO RLE): the same mask has the same id on
    every run and machine, whatever position a proposer returned it at."""
    rle = encode_rle(np.asarray(mask).astype(bool))
    return f"{prefix}-{stable_key('region', rle['size'], rle['counts'])[:16]}"


def unique_regions(regions: list[Region]) -> list[Region]:
    """``regions`` without repeats of a region id (a proposer that returned one mask twice)."""
    seen: set[str] = set()
    out = []
    for region in regions:
        if region.region_id not in seen:
            seen.add(region.region_id)
            out.append(region)
    return out


def _read_mask_png(path: str) -> np.ndarray:
    try:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("L")) > 127
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise RegionDecodeError(f"{path}: {error}") from error


@dataclass
class ImageRecord:
    """One image and its regions; ``regions is None`` means the image needs proposals (SAM)."""

    record_id: str
    dataset: str
    image_id: str
    image_path: str
    regions: list[Region] | None
    license: str | None = None
    url: str | None = None

    def provenance(self, region_id: str | None = None) -> Provenance:
        return Provenance(
            dataset=self.dataset,
            image_id=self.image_id,
            region_id=region_id,
            license=self.license,
            url=self.url,
        )


def record_drop(record_id: str, reason: str, detail: str, provenance: Provenance | None = None) -> Drop:
    return keyed_drop("replacement", record_id, reason, detail, provenance)


def load_rgb(path: str) -> np.ndarray:
    """Read an RGB image fully (a truncated file fails here)."""
    with Image.open(path) as image:
        image.load()
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))


def read_image(record: ImageRecord) -> np.ndarray | Drop:
    """The record's image, or a ``missing_image`` / ``corrupt_image`` drop."""
    if not os.path.exists(record.image_path):
        return record_drop(record.record_id, "missing_image", record.image_path, record.provenance())
    try:
        return load_rgb(record.image_path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return record_drop(
            record.record_id, "corrupt_image", f"{record.image_path}: {error}", record.provenance()
        )
