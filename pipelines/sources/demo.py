"""The embedded demo: real photographs shipped inside scikit-image's wheel, laid out as Visual Genome.

``demo_data/refer_demo.json`` outlines real objects in them in the PhraseCut format, so the demo
runs the same reader and stage a real PhraseCut build runs.
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np
import skimage.data
from PIL import Image

# demo image id -> how to get the photograph from scikit-image
DEMO_IMAGES: dict[int, str] = {1: "astronaut", 2: "coffee", 3: "chelsea", 4: "rocket", 5: "motorcycle_left"}
DEMO_LICENSE = "scikit-image sample data (public domain / CC0 photographs, see skimage/data/README.txt)"


def demo_annotation_path() -> str:
    return str(resources.files("ieiw.pipelines.sources").joinpath("demo_data", "refer_demo.json"))


def demo_photo(name: str) -> np.ndarray:
    """One scikit-image sample photograph as an RGB ``uint8`` array (from the installed wheel, offline)."""
    loader = getattr(skimage.data, name, None)
    if loader is not None:
        image = loader()
    else:
        with Image.open(os.path.join(os.path.dirname(skimage.data.__file__), f"{name}.png")) as picture:
            image = np.asarray(picture.convert("RGB"))
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def materialize_demo_images(image_dir: str, quality: int = 95) -> list[str]:
    """Write the demo photographs as ``<image_dir>/<image_id>.jpg``; existing files are kept."""
    os.makedirs(image_dir, exist_ok=True)
    paths = []
    for image_id, name in DEMO_IMAGES.items():
        path = os.path.join(image_dir, f"{image_id}.jpg")
        if not os.path.exists(path):
            tmp = f"{path}.tmp"
            Image.fromarray(demo_photo(name)).save(tmp, format="JPEG", quality=quality)
            os.replace(tmp, path)
        paths.append(path)
    return paths
