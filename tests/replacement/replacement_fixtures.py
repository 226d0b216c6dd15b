"""Small SA-1B and Open Images V7 datasets in their real on-disk formats, written with Pillow and
pycocotools, with regions a selector must keep and regions it must drop (and why)."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

COLOURS = [(220, 30, 30), (30, 60, 220), (30, 180, 60), (230, 210, 40), (200, 60, 200), (20, 200, 210)]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.integers(90, 170, size=(size, size, 3)).astype(np.uint8)
    return (base // 2 + np.linspace(0, 80, size, dtype=np.uint8)[None, :, None]).astype(np.uint8)


def _shape_mask(size: int, kind: int, cx: float, cy: float, r: float) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind % 2 == 0:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.rectangle([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=255)
    return np.asarray(canvas) > 0


def draw_objects(image_index: int, size: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """An image with two coloured objects; returns the image and the objects' bool masks."""
    rng = np.random.default_rng(seed + image_index)
    image = _background(rng, size)
    masks = []
    for n in range(2):
        mask = _shape_mask(size, image_index + n, size * (0.3 + 0.4 * n), size * 0.5, size * 0.13)
        image[mask] = COLOURS[(image_index + 2 * n) % len(COLOURS)]
        masks.append(mask)
    return image, masks


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def bad_regions(size: int) -> dict[str, np.ndarray]:
    """Regions the default selection drops, keyed by the reason it must give."""
    background = np.zeros((size, size), bool)
    background[: size // 4, :] = True  # a band along the top: touches the border
    tiny = np.zeros((size, size), bool)
    tiny[5:7, 60:62] = True
    fragmented = np.zeros((size, size), bool)
    fragmented[90:100, 10:20] = True
    fragmented[90:100, 100:110] = True
    return {"touches_border": background, "region_too_small": tiny, "fragmented": fragmented}


def write_sa1b(root: str, n_images: int = 4, size: int = 128, seed: int = 0, broken: bool = True) -> str:
    """``root/sa_<id>.jpg`` + ``sa_<id>.json`` (two objects and four bad regions each)."""
    os.makedirs(root, exist_ok=True)
    for index in range(n_images):
        image_id = 1000 + index
        image, masks = draw_objects(index, size, seed)
        Image.fromarray(image).save(os.path.join(root, f"sa_{image_id}.jpg"), quality=95)
        annotations = []
        regions = [(m, 0.95, 0.97) for m in masks] + [(m, 0.95, 0.97) for m in bad_regions(size).values()]
        regions.append((masks[0], 0.5, 0.97))  # low predicted IoU
        for number, (mask, iou, stability) in enumerate(regions):
            ys, xs = np.nonzero(mask)
            annotations.append(
                {
                    "id": image_id * 100 + number,
                    "segmentation": rle(mask),
                    "area": int(mask.sum()),
                    "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)],
                    "predicted_iou": iou,
                    "stability_score": stability,
                    "point_coords": [[float(xs.mean()), float(ys.mean())]],
                    "crop_box": [0, 0, size, size],
                }
            )
        info = {"image_id": image_id, "width": size, "height": size, "file_name": f"sa_{image_id}.jpg"}
        with open(os.path.join(root, f"sa_{image_id}.json"), "w") as handle:
            json.dump({"image": info, "annotations": annotations}, handle)
    if broken:
        with open(os.path.join(root, "sa_9999.json"), "w") as handle:
            handle.write('{"image": {"image_id": 9999, "width": 10')  # truncated file
    return root


OPEN_IMAGES_CLASSES = {"/m/01yrx": "Cat", "/m/0bt9lr": "Dog", "/m/0k4j": "Car", "/m/02p5f1q": "Coffee cup"}


def write_openimages(root: str, n_images: int = 3, size: int = 128, seed: int = 10) -> dict[str, str]:
    """Images, mask PNGs (at half resolution, as some masks are), the segmentation and class CSVs."""
    image_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    labels = list(OPEN_IMAGES_CLASSES)
    rows = []
    for index in range(n_images):
        image_id = f"{index:04x}abcdef{index:04x}"
        image, masks = draw_objects(index, size, seed)
        Image.fromarray(image).save(os.path.join(image_dir, f"{image_id}.jpg"), quality=95)
        for number, mask in enumerate(masks):
            label = labels[(index + number) % len(labels)]
            box_id = f"{index:02x}{number:02x}beef"
            name = f"{image_id}_{label.replace('/', '')}_{box_id}.png"
            small = Image.fromarray(mask.astype(np.uint8) * 255).resize((size // 2, size // 2), Image.NEAREST)
            small.save(os.path.join(mask_dir, name))
            ys, xs = np.nonzero(mask)
            rows.append(
                {
                    "MaskPath": name,
                    "ImageID": image_id,
                    "LabelName": label,
                    "BoxID": box_id,
                    "BoxXMin": xs.min() / size,
                    "BoxXMax": xs.max() / size,
                    "BoxYMin": ys.min() / size,
                    "BoxYMax": ys.max() / size,
                    "PredictedIoU": 0.9,
                    "Clicks": "0.5 0.5 1",
                }
            )
    csv_path = os.path.join(root, "segmentation.csv")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    classes = os.path.join(root, "oidv7-class-descriptions.csv")
    with open(classes, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["LabelName", "DisplayName"])
        writer.writerows(OPEN_IMAGES_CLASSES.items())
    return {
        "segmentation_csv": csv_path,
        "masks": mask_dir,
        "images": image_dir,
        "class_descriptions": classes,
    }
