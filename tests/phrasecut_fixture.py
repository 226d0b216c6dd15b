"""Writes small PhraseCut datasets in the real on-disk format: refer_*.json and <image_id>.jpg files."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("red square", "blue disc", "green triangle", "yellow bar")
COLOURS = {
    "red square": (220, 30, 30),
    "blue disc": (30, 60, 220),
    "green triangle": (30, 180, 60),
    "yellow bar": (230, 210, 40),
}


def shape_polygon(kind: str, cx: float, cy: float, r: float) -> list[list[float]]:
    if kind == "red square":
        return [[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]]
    if kind == "green triangle":
        return [[cx, cy - r], [cx + r, cy + r], [cx - r, cy + r]]
    if kind == "yellow bar":
        return [[cx - r, cy - r / 3], [cx + r, cy - r / 3], [cx + r, cy + r / 3], [cx - r, cy + r / 3]]
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    return [[float(cx + r * np.cos(a)), float(cy + r * np.sin(a))] for a in angles]


def write_phrasecut(
    root: str, n_images: int = 4, size: int = 128, seed: int = 0, tasks_per_image: int = 2
) -> tuple[str, str]:
    """Write ``root/images/<id>.jpg`` and ``root/refer_test.json``; returns (annotation path, image dir)."""
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    tasks = []
    for image_id in range(1, n_images + 1):
        base = rng.integers(90, 170, size=(size, size, 3)).astype(np.uint8)
        base = (base // 2 + np.linspace(0, 80, size, dtype=np.uint8)[None, :, None]).astype(np.uint8)
        picture = Image.fromarray(base)
        draw = ImageDraw.Draw(picture)
        for n in range(tasks_per_image):
            kind = SHAPES[(image_id + n) % len(SHAPES)]
            r = size * 0.12
            cx = size * (0.3 + 0.4 * n) if tasks_per_image > 1 else size / 2
            cy = size * 0.5
            polygon = shape_polygon(kind, cx, cy, r)
            draw.polygon([tuple(p) for p in polygon], fill=COLOURS[kind])
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            tasks.append(
                {
                    "task_id": f"{image_id}__{n}",
                    "image_id": image_id,
                    "phrase": kind,
                    "Polygons": [[polygon]],
                    "instance_boxes": [[min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]],
                    "ann_ids": [1000 * image_id + n],
                    "phrase_structure": {
                        "name": kind.split()[1],
                        "attributes": [kind.split()[0]],
                        "relation_ids": [],
                        "relations": [],
                        "type": "name",
                    },
                }
            )
        picture.save(os.path.join(image_dir, f"{image_id}.jpg"), quality=95)
    path = os.path.join(root, "refer_test.json")
    with open(path, "w") as handle:
        json.dump(tasks, handle)
    # the release's image list: Visual Genome's images are split between two folders
    folders = ("VG_100K", "VG_100K_2")
    image_data = [
        {
            "image_id": image_id,
            "url": f"https://cs.stanford.edu/people/rak248/{folders[image_id % 2]}/{image_id}.jpg",
            "width": size,
            "height": size,
            "split": "test",
        }
        for image_id in range(1, n_images + 1)
    ]
    with open(os.path.join(root, "image_data_split.json"), "w") as handle:
        json.dump(image_data, handle)
    return path, image_dir
