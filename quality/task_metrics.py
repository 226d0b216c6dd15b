"""The vision tasks' own metrics, computed on answers already read back out of edited images.

Keypoint AP from object keypoint similarity (pycocotools ``COCOeval``) on the asked joints, IoU of
masks, PSNR (scikit-image) for enhancement. :mod:`ieiw.quality.task_evaluation` applies them over samples.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from skimage.metrics import peak_signal_noise_ratio

# OKS sigmas (COCO's, per canonical joint name; CrowdPose's head/neck; MPII's extra joints near their kin).
OKS_SIGMAS: dict[str, float] = {
    "nose": 0.026,
    "left_eye": 0.025,
    "right_eye": 0.025,
    "left_ear": 0.035,
    "right_ear": 0.035,
    "left_shoulder": 0.079,
    "right_shoulder": 0.079,
    "left_elbow": 0.072,
    "right_elbow": 0.072,
    "left_wrist": 0.062,
    "right_wrist": 0.062,
    "left_hip": 0.107,
    "right_hip": 0.107,
    "left_knee": 0.087,
    "right_knee": 0.087,
    "left_ankle": 0.089,
    "right_ankle": 0.089,
    "head": 0.079,
    "neck": 0.079,
    "head_top": 0.079,
    "upper_neck": 0.079,
    "thorax": 0.079,
    "pelvis": 0.107,
}
DEFAULT_OKS_SIGMA = 0.079


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two masks (nonzero is inside); 1.0 when both are empty."""
    p, t = predicted > 0, truth > 0
    union = np.logical_or(p, t).sum()
    return float(np.logical_and(p, t).sum() / union) if union else 1.0


def keypoint_ap(
    samples: list[dict[str, Any]], decoded: list[list[tuple[float, float] | None]]
) -> dict[str, float]:
    """COCO keypoint AP over the asked joints only.

    ``samples`` are keypoint metas' ``extra`` dicts (``joints`` with ``name``, ``x``, ``y``; ``area``);
    ``decoded`` holds one centre or None per asked joint. Each sample is one image with one person;
    its unasked joints are unlabelled, so OKS averages over the asked ones.
    """
    names = sorted({j["name"] for s in samples for j in s["joints"]})
    slot = {name: i for i, name in enumerate(names)}
    images, truths, detections = [], [], []
    for index, (extra, found) in enumerate(zip(samples, decoded, strict=True), 1):
        truth = [0.0] * (3 * len(names))
        guess = [0.0] * (3 * len(names))
        for joint, point in zip(extra["joints"], found, strict=True):
            k = 3 * slot[joint["name"]]
            truth[k : k + 3] = [float(joint["x"]), float(joint["y"]), 2.0]
            if point is not None:
                guess[k : k + 3] = [float(point[0]), float(point[1]), 1.0]
        xs, ys = [j["x"] for j in extra["joints"]], [j["y"] for j in extra["joints"]]
        box = extra.get("box") or [min(xs), min(ys), max(xs) - min(xs) + 1, max(ys) - min(ys) + 1]
        images.append({"id": index})
        truths.append(
            {
                "id": index,
                "image_id": index,
                "category_id": 1,
                "iscrowd": 0,
                "keypoints": truth,
                "num_keypoints": len(extra["joints"]),
                "area": float(extra["area"]),
                "bbox": box,
            }
        )
        detections.append({"image_id": index, "category_id": 1, "keypoints": guess, "score": 1.0})
    if not images:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    with contextlib.redirect_stdout(io.StringIO()):
        ground = COCO()
        ground.dataset = {
            "images": images,
            "annotations": truths,
            "categories": [{"id": 1, "name": "person", "keypoints": names}],
        }
        ground.createIndex()
        results = ground.loadRes(detections)
        evaluation = COCOeval(ground, results, iouType="keypoints")
        evaluation.params.kpt_oks_sigmas = np.array([OKS_SIGMAS.get(n, DEFAULT_OKS_SIGMA) for n in names])
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = evaluation.stats
    return {"AP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2])}


def psnr(target: np.ndarray, output: np.ndarray, cap: float = 100.0) -> float:
    """PSNR in dB (scikit-image), capped for identical images."""
    if np.array_equal(target, output):
        return cap
    return min(float(peak_signal_noise_ratio(target, output, data_range=255)), cap)
