"""Score a model's edited images on the original vision tasks, over held-out samples of one task.

:func:`evaluate_task_outputs` reads each answer back out (:mod:`ieiw.quality.task_decoders`) and scores it
with the task's own metric (:mod:`ieiw.quality.task_metrics`): keypoint AP on the asked joints, mIoU for
semantic masks and cumulative IoU for referring ones, PSNR and SSIM (scikit-image) for enhancement.
It writes a per-sample CSV and a PNG grid of examples with the decoded answers drawn in.
"""

from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw
from skimage.metrics import structural_similarity

from ieiw.quality.task_decoders import decode_keypoints, decode_mask
from ieiw.quality.task_metrics import keypoint_ap, psnr
from ieiw.storage.images import decode_image
from ieiw.storage.schema import Sample, Task
from ieiw.storage.visual_prompts import color_rgb

TASKS: dict[str, Task] = {
    "keypoints": Task.KEYPOINT,
    "segmentation": Task.SEGMENTATION,
    "enhancement": Task.ENHANCEMENT,
}
EMPTY_MASK_SHARE = 0.005  # a predicted mask under 0.5% of the image counts as "nothing there"
GRID_TILE = 192


# --- outputs on disk ---------------------------------------------------------------------------


class OutputFolder(Mapping):
    """Edited images named ``<key>.png`` (or .jpg/.webp) in a folder, read lazily by sample key."""

    SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

    def __init__(self, folder: str) -> None:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"outputs folder not found: {folder}")
        self.folder = folder
        self._paths = {
            os.path.splitext(e.name)[0]: e.path
            for e in os.scandir(folder)
            if e.name.lower().endswith(self.SUFFIXES)
        }

    def __getitem__(self, key: str) -> np.ndarray:
        with open(self._paths[key], "rb") as handle:
            return decode_image(handle.read())

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def _fit(output: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An output at the sample's size (a model may edit at another resolution)."""
    if output.ndim == 2:
        output = np.stack([output] * 3, axis=-1)
    output = output[..., :3]
    if output.shape[:2] == tuple(shape[:2]):
        return output
    height, width = shape[:2]
    shrink = output.shape[0] > height
    return cv2.resize(output, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


# --- grid of examples ------------------------------------------------------------------------


class _Grid:
    """The first few examples as rows of tiles: source | output (decoded answer drawn) | target."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.rows: list[tuple[list[np.ndarray], str]] = []

    def add(self, tiles: list[np.ndarray], label: str) -> None:
        if len(self.rows) < self.limit:
            self.rows.append(([_tile(t) for t in tiles], label))

    def write(self, path: str, title: str) -> str | None:
        if not self.rows:
            return None
        columns = max(len(t) for t, _ in self.rows)
        band = 34
        canvas = Image.new("RGB", (columns * GRID_TILE, 24 + len(self.rows) * (GRID_TILE + band)), "white")
        draw = ImageDraw.Draw(canvas)
        draw.text((6, 6), f"{title}  (source | output with decoded answer | target)", fill="black")
        for r, (tiles, label) in enumerate(self.rows):
            top = 24 + r * (GRID_TILE + band)
            for c, tile in enumerate(tiles):
                canvas.paste(Image.fromarray(tile), (c * GRID_TILE, top))
            draw.text((4, top + GRID_TILE + 2), label[:150], fill="black")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        canvas.save(path)
        return path


def _tile(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return cv2.resize(image, (GRID_TILE, GRID_TILE), interpolation=cv2.INTER_AREA)


def _draw_found(image: np.ndarray, joints: list[dict[str, Any]], found: list, radius: float) -> np.ndarray:
    """Asked positions as white rings, decoded centres as crosses in the asked colour."""
    canvas = Image.fromarray(image.copy())
    draw = ImageDraw.Draw(canvas)
    for joint, point in zip(joints, found, strict=True):
        x, y, r = joint["x"], joint["y"], radius
        draw.ellipse((x - r, y - r, x + r, y + r), outline="white", width=2)
        if point is not None:
            px, py = point
            ink = color_rgb(joint["color"])
            draw.line((px - r, py, px + r, py), fill=ink, width=2)
            draw.line((px, py - r, px, py + r), fill=ink, width=2)
    return np.asarray(canvas)


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    edges = cv2.morphologyEx((mask > 0).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    out = image.copy()
    out[edges] = (255, 255, 255)
    return out


# --- evaluation over samples and outputs -------------------------------------------------------


def _evaluate_keypoints(
    pairs: Iterable[tuple[Sample, np.ndarray | None]], grid: _Grid
) -> tuple[dict, list[dict]]:
    extras, decoded, per_sample = [], [], []
    for sample, output in pairs:
        extra = sample.meta.extra
        radius = float(extra["radius"])
        found = (
            decode_keypoints(output, sample.source, extra["joints"], radius)
            if output is not None
            else [None] * len(extra["joints"])
        )
        extras.append(extra)
        decoded.append(found)
        errors = [
            math.hypot(p[0] - j["x"], p[1] - j["y"])
            for j, p in zip(extra["joints"], found, strict=True)
            if p is not None
        ]
        per_sample.append(
            {
                "key": sample.key,
                "joints": len(found),
                "found": len(errors),
                "mean_error_px": round(float(np.mean(errors)), 3) if errors else None,
                "missing_output": output is None,
                "instruction": sample.meta.instruction,
            }
        )
        if output is not None:
            grid.add(
                [sample.source, _draw_found(output, extra["joints"], found, radius), sample.target],
                sample.meta.instruction,
            )
    metrics: dict[str, Any] = keypoint_ap(extras, decoded)
    flat = [
        (j, p)
        for extra, found in zip(extras, decoded, strict=True)
        for j, p in zip(extra["joints"], found, strict=True)
    ]
    hits = [
        p is not None and math.hypot(p[0] - j["x"], p[1] - j["y"]) <= float(e["radius"])
        for e, found in zip(extras, decoded, strict=True)
        for j, p in zip(e["joints"], found, strict=True)
    ]
    metrics.update(
        joints=len(flat),
        found_rate=_mean([p is not None for _, p in flat]),
        hit_rate=_mean(hits),
        mean_error_px=_mean([math.hypot(p[0] - j["x"], p[1] - j["y"]) for j, p in flat if p is not None]),
    )
    return metrics, per_sample


def _evaluate_segmentation(
    pairs: Iterable[tuple[Sample, np.ndarray | None]], grid: _Grid
) -> tuple[dict, list[dict]]:
    class_inter: dict[str, int] = defaultdict(int)
    class_union: dict[str, int] = defaultdict(int)
    ref_inter = ref_union = 0
    ref_ious: list[float] = []
    negatives_right: list[bool] = []
    per_sample = []
    for sample, output in pairs:
        extra = sample.meta.extra
        truth = sample.mask if sample.mask is not None else np.zeros(sample.source.shape[:2], np.uint8)
        predicted = (
            decode_mask(output, sample.source, extra["color"], extra.get("alpha"))
            if output is not None
            else np.zeros_like(truth)
        )
        inter = int(np.logical_and(predicted > 0, truth > 0).sum())
        union = int(np.logical_or(predicted > 0, truth > 0).sum())
        row = {
            "key": sample.key,
            "kind": extra.get("kind"),
            "negative": bool(extra.get("negative")),
            "iou": None,
            "predicted_share": round(float((predicted > 0).mean()), 5),
            "missing_output": output is None,
            "instruction": sample.meta.instruction,
        }
        if extra.get("negative"):
            negatives_right.append(float((predicted > 0).mean()) < EMPTY_MASK_SHARE)
        elif extra.get("kind") == "semantic":
            name = str(extra.get("class_name"))
            class_inter[name] += inter
            class_union[name] += union
            row["iou"] = round(inter / union, 5) if union else None
        else:
            ref_inter += inter
            ref_union += union
            ref_ious.append(inter / union if union else 1.0)
            row["iou"] = round(ref_ious[-1], 5)
        per_sample.append(row)
        if output is not None:
            grid.add(
                [sample.source, _outline(output, predicted), _outline(sample.target, truth)],
                sample.meta.instruction,
            )
    class_ious = {name: class_inter[name] / class_union[name] for name in class_union if class_union[name]}
    metrics = {
        "mIoU": _mean(list(class_ious.values())),
        "semantic_classes": len(class_ious),
        "cIoU": ref_inter / ref_union if ref_union else float("nan"),
        "mean_IoU_referring": _mean(ref_ious),
        "referring_samples": len(ref_ious),
        "negatives": len(negatives_right),
        "negative_accuracy": _mean(negatives_right),
    }
    return metrics, per_sample


def _evaluate_enhancement(
    pairs: Iterable[tuple[Sample, np.ndarray | None]], grid: _Grid
) -> tuple[dict, list[dict]]:
    rows, per_sample = defaultdict(list), []
    for sample, output in pairs:
        kind = str(sample.meta.extra.get("kind", "enhancement"))
        before_psnr = psnr(sample.target, sample.source)
        row = {
            "key": sample.key,
            "kind": kind,
            "psnr": None,
            "ssim": None,
            "input_psnr": round(before_psnr, 4),
            "missing_output": output is None,
            "instruction": sample.meta.instruction,
        }
        if output is not None:
            after_psnr = psnr(sample.target, output)
            ssim = structural_similarity(sample.target, output, channel_axis=-1, data_range=255)
            before_ssim = structural_similarity(sample.target, sample.source, channel_axis=-1, data_range=255)
            row.update(psnr=round(after_psnr, 4), ssim=round(float(ssim), 5))
            for group in ("all", kind):
                rows[group].append((after_psnr, ssim, before_psnr, before_ssim))
            grid.add(
                [sample.source, output, sample.target], f"{sample.meta.instruction}  PSNR {after_psnr:.2f} dB"
            )
        per_sample.append(row)
    metrics: dict[str, Any] = {}
    for group, values in rows.items():
        prefix = "" if group == "all" else f"{group}_"
        array = np.asarray(values, dtype=np.float64)
        metrics.update(
            {
                f"{prefix}PSNR": float(array[:, 0].mean()),
                f"{prefix}SSIM": float(array[:, 1].mean()),
                f"{prefix}input_PSNR": float(array[:, 2].mean()),
                f"{prefix}input_SSIM": float(array[:, 3].mean()),
                f"{prefix}samples": len(values),
            }
        )
    return metrics, per_sample


_EVALUATORS = {
    Task.KEYPOINT: _evaluate_keypoints,
    Task.SEGMENTATION: _evaluate_segmentation,
    Task.ENHANCEMENT: _evaluate_enhancement,
}


def _mean(values: list) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def evaluate_task_outputs(
    task: str | Task,
    samples: Iterable[Sample],
    outputs: Mapping[str, np.ndarray],
    out_dir: str,
    grid_examples: int = 12,
) -> tuple[dict[str, Any], list[dict], str | None]:
    """Score edited ``outputs`` (by sample key) against held-out ``samples`` of one task.

    Returns the metrics, the table rows (one per metric) and the path of a PNG grid of examples.
    Samples of other tasks are skipped; a sample without an output counts as answered with nothing.
    Also writes ``<out_dir>/<task>_per_sample.csv``.
    """
    wanted = TASKS.get(str(task)) or Task(str(task))
    if wanted not in _EVALUATORS:
        raise ValueError(f"no evaluation for task {task!r}; known: {', '.join(TASKS)}")
    counts = {"samples": 0, "missing_outputs": 0}

    def pairs() -> Iterator[tuple[Sample, np.ndarray | None]]:
        for sample in samples:
            if sample.meta.task != wanted:
                continue
            counts["samples"] += 1
            output = outputs.get(sample.key)
            if output is None:
                counts["missing_outputs"] += 1
                yield sample, None
            else:
                yield sample, _fit(np.asarray(output), sample.source.shape)

    grid = _Grid(grid_examples)
    metrics, per_sample = _EVALUATORS[wanted](pairs(), grid)
    metrics = {**counts, **metrics}
    os.makedirs(out_dir, exist_ok=True)
    name = str(wanted)
    if per_sample:
        with open(
            os.path.join(out_dir, f"{name}_per_sample.csv"), "w", newline="", encoding="utf-8"
        ) as handle:
            writer = csv.DictWriter(handle, fieldnames=list(per_sample[0]))
            writer.writeheader()
            writer.writerows(per_sample)
    grid_path = grid.write(os.path.join(out_dir, f"{name}_grid.png"), f"task: {name}")
    rows = [{"task": name, "metric": key, "value": value} for key, value in metrics.items()]
    return metrics, rows, grid_path
