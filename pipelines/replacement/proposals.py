"""Region proposers for images that come without masks: SAM (see :mod:`.sam`) or a classical one."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from ieiw.pipelines.replacement.records import Region, mask_region_id, unique_regions


class Proposer(Protocol):
    """Proposes candidate regions for one image. Region ids derive from the masks' content
    (:func:`~ieiw.pipelines.replacement.records.mask_region_id`); what shapes them is read from the
    config (``proposer:``) into the keys of the samples on proposed regions."""

    name: str

    def propose(self, image: np.ndarray) -> list[Region]: ...


class FelzenszwalbProposer:
    """Graph-based segmentation (scikit-image): the classical proposer for runs without SAM weights."""

    name = "felzenszwalb"

    def __init__(
        self, scale: float = 400.0, sigma: float = 0.8, min_size: int = 200, max_regions: int = 64
    ) -> None:
        self.scale, self.sigma, self.min_size, self.max_regions = scale, sigma, min_size, max_regions

    def propose(self, image: np.ndarray) -> list[Region]:
        from skimage.segmentation import felzenszwalb

        segments = felzenszwalb(image, scale=self.scale, sigma=self.sigma, min_size=self.min_size)
        ids, counts = np.unique(segments, return_counts=True)
        largest = ids[np.argsort(-counts, kind="stable")][: self.max_regions]
        masks = [segments == i for i in largest]
        return unique_regions([Region(region_id=mask_region_id("fz", m), mask_array=m) for m in masks])
