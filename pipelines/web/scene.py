"""Is an edit the same scene as the original? Aligned SSIM, backed by ORB feature matching with RANSAC.

SSIM on small grayscale versions catches global edits (colour, exposure, retouching, local object
changes); ORB keypoints consistent with one homography catch edits that move the frame (crops,
upscales, borders) or replace large regions. Memes, reaction images and text screenshots pass neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.metrics import structural_similarity

SSIM_SIZE = 128
ORB_SIDE = 512


@dataclass
class SceneScores:
    ssim: float
    orb_inliers: int
    orb_matches: int
    mean_abs_diff: float  # after resizing the edit to the original's size, 0..255

    @property
    def orb_fraction(self) -> float:
        return self.orb_inliers / self.orb_matches if self.orb_matches else 0.0

    @property
    def similarity(self) -> float:
        """One number in [0, 1] for ranking: the stronger of the two signals."""
        orb = min(1.0, self.orb_inliers / 100.0) * self.orb_fraction
        return float(max(self.ssim, orb))

    def as_dict(self) -> dict[str, float]:
        return {
            "ssim": round(self.ssim, 4),
            "orb_inliers": float(self.orb_inliers),
            "orb_fraction": round(self.orb_fraction, 4),
            "mean_abs_diff": round(self.mean_abs_diff, 3),
            "similarity": round(self.similarity, 4),
        }


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def _fit(gray: np.ndarray, side: int) -> np.ndarray:
    scale = side / max(gray.shape[:2])
    if scale >= 1:
        return gray
    return cv2.resize(
        gray,
        (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
        interpolation=cv2.INTER_AREA,
    )


def aligned_ssim(original: np.ndarray, edit: np.ndarray) -> float:
    a = cv2.resize(_gray(original), (SSIM_SIZE, SSIM_SIZE), interpolation=cv2.INTER_AREA)
    b = cv2.resize(_gray(edit), (SSIM_SIZE, SSIM_SIZE), interpolation=cv2.INTER_AREA)
    return float(
        structural_similarity(
            a, b, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
    )


def orb_matches(original: np.ndarray, edit: np.ndarray, features: int = 1500) -> tuple[int, int]:
    """(inliers of a RANSAC homography, good ratio-test matches) between ORB keypoints of both images."""
    orb = cv2.ORB_create(nfeatures=features)
    kp_a, des_a = orb.detectAndCompute(_fit(_gray(original), ORB_SIDE), None)
    kp_b, des_b = orb.detectAndCompute(_fit(_gray(edit), ORB_SIDE), None)
    if des_a is None or des_b is None or len(kp_a) < 8 or len(kp_b) < 8:
        return 0, 0
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(des_a, des_b, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < 0.75 * p[1].distance]
    if len(good) < 8:
        return 0, len(good)
    src = np.float32([kp_a[m.queryIdx].pt for m in good]).reshape(-1, 1, 2)
    dst = np.float32([kp_b[m.trainIdx].pt for m in good]).reshape(-1, 1, 2)
    _, mask = cv2.findHomography(src, dst, cv2.RANSAC, 5.0)
    return (int(mask.sum()) if mask is not None else 0), len(good)


def scene_scores(original: np.ndarray, edit_resized: np.ndarray) -> SceneScores:
    """Scores of an edit already resized to the original's size."""
    inliers, matches = orb_matches(original, edit_resized)
    diff = float(np.abs(original.astype(np.int16) - edit_resized.astype(np.int16)).mean())
    return SceneScores(aligned_ssim(original, edit_resized), inliers, matches, diff)


def same_scene(scores: SceneScores, ssim_min: float, inliers_min: int, fraction_min: float) -> bool:
    return scores.ssim >= ssim_min or (
        scores.orb_inliers >= inliers_min and scores.orb_fraction >= fraction_min
    )
