"""Which regions are "semantic": objects a person would name, not background or fragments.

A region is kept when its area is within bounds, its predicted IoU and stability are high (where
the source gives them), it covers little of the image border, and it is one connected component or
close to it. Every rejected region is counted under its reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict

from ieiw.pipelines.replacement.records import Region, RegionDecodeError


class SelectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_area_fraction: float = 0.01
    max_area_fraction: float = 0.4
    min_predicted_iou: float = 0.85
    min_stability: float = 0.9
    max_border_fraction: float = 0.2  # share of the image's border pixels inside the region
    min_largest_component: float = 0.9  # share of the region in its largest connected component
    min_side: int = 16  # pixels, of the region's bounding box


@dataclass
class SelectedRegion:
    region: Region
    mask: np.ndarray  # HxW bool
    bbox: tuple[int, int, int, int]  # x, y, w, h
    area_fraction: float

    @property
    def score(self) -> float:
        """Ranks kept regions of one image: confident, stable, large."""
        iou = self.region.predicted_iou if self.region.predicted_iou is not None else 1.0
        stability = self.region.stability_score if self.region.stability_score is not None else 1.0
        return iou * stability * float(np.sqrt(self.area_fraction))


def border_fraction(mask: np.ndarray) -> float:
    edges = np.concatenate([mask[0, :], mask[-1, :], mask[1:-1, 0], mask[1:-1, -1]])
    return float(edges.mean()) if edges.size else 0.0


def largest_component_share(mask: np.ndarray) -> float:
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return 0.0
    areas = stats[1:, cv2.CC_STAT_AREA]
    return float(areas.max() / areas.sum())


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def assess(region: Region, mask: np.ndarray, config: SelectionConfig) -> str | None:
    """The reason to drop ``region`` (a slug), or None to keep it."""
    if region.predicted_iou is not None and region.predicted_iou < config.min_predicted_iou:
        return "low_predicted_iou"
    if region.stability_score is not None and region.stability_score < config.min_stability:
        return "low_stability"
    fraction = float(mask.mean())
    if fraction == 0.0:
        return "empty_mask"
    if fraction < config.min_area_fraction:
        return "region_too_small"
    if fraction > config.max_area_fraction:
        return "region_too_large"
    if border_fraction(mask) > config.max_border_fraction:
        return "touches_border"
    if largest_component_share(mask) < config.min_largest_component:
        return "fragmented"
    _, _, width, height = bounding_box(mask)
    if min(width, height) < config.min_side:
        return "region_too_thin"
    return None


def select_regions(
    regions: list[Region], height: int, width: int, config: SelectionConfig
) -> tuple[list[SelectedRegion], Counter]:
    """The kept regions, best first, and the count of dropped regions by reason."""
    kept: list[SelectedRegion] = []
    dropped: Counter = Counter()
    for region in regions:
        try:
            mask = region.decode(height, width)
        except RegionDecodeError:
            dropped["bad_mask"] += 1
            continue
        reason = assess(region, mask, config)
        if reason is not None:
            dropped[reason] += 1
            continue
        kept.append(SelectedRegion(region, mask, bounding_box(mask), float(mask.mean())))
    kept.sort(key=lambda s: s.score, reverse=True)
    return kept, dropped
