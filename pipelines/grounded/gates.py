"""The gates a found object passes before it is removed, each a counted drop reason.

X2Edit's subject deletion and AnyEdit's removal are the anchors: a confident box, one instance of the
phrase (or an instruction that names them all), a mask neither tiny nor most of the photo, a mask that
stays in its box, and no mask that shares pixels with another object kept from the same photo. After
inpainting, the verifier must no longer find the phrase where the object was. Every threshold is a
setting of :class:`~ieiw.pipelines.grounded.config.GateConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ieiw.pipelines.grounded.config import GateConfig
from ieiw.pipelines.grounded.grounding import Grounded

LOW_SCORE = "low_detector_score"
MULTIPLE = "multiple_instances"
TOO_SMALL = "mask_too_small"
TOO_LARGE = "mask_too_large"
OUTSIDE = "mask_outside_box"
OVERLAP = "mask_overlap"
STILL_PRESENT = "object_still_present"
REASONS = (LOW_SCORE, MULTIPLE, TOO_SMALL, TOO_LARGE, OUTSIDE, OVERLAP, STILL_PRESENT)


@dataclass(frozen=True)
class Failed:
    """A gate that failed: its drop reason and what was measured."""

    reason: str
    detail: str


def instance_gate(found: Grounded, gates: GateConfig) -> Failed | None:
    """A confident box, and one instance (or, with ``instances: all``, at most ``max_instances``)."""
    count = len(found.boxes)
    if count == 0:
        return Failed(LOW_SCORE, f"{found.tag.phrase}: best box {found.best_score:.3f} < {gates.min_score}")
    if count > 1 and gates.instances == "one":
        return Failed(MULTIPLE, f"{found.tag.phrase}: {count} boxes at least {gates.min_score} confident")
    if count > gates.max_instances:
        return Failed(
            MULTIPLE, f"{found.tag.phrase}: {count} instances > max_instances {gates.max_instances}"
        )
    return None


def box_region(boxes: np.ndarray, margin: float, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of the boxes (``x0, y0, x1, y1``), each widened by ``margin`` of its size per side."""
    region = np.zeros(shape, bool)
    height, width = shape
    for x0, y0, x1, y1 in boxes:
        dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
        left, top = max(0, int(np.floor(x0 - dx))), max(0, int(np.floor(y0 - dy)))
        right, bottom = min(width, int(np.ceil(x1 + dx))), min(height, int(np.ceil(y1 + dy)))
        region[top:bottom, left:right] = True
    return region


@dataclass(frozen=True)
class MaskMeasures:
    area: float  # of the image
    inside: float  # of the mask, inside its widened boxes


def measure(mask: np.ndarray, boxes: np.ndarray, gates: GateConfig) -> MaskMeasures:
    pixels = int(np.count_nonzero(mask))
    inside = np.count_nonzero(mask & box_region(boxes, gates.box_margin, mask.shape))
    return MaskMeasures(pixels / mask.size, inside / pixels if pixels else 0.0)


def mask_gate(measures: MaskMeasures, gates: GateConfig) -> Failed | None:
    """The mask's area between ``min_area`` and ``max_area``, and at least ``min_inside_box`` of it in
    its box."""
    if measures.area < gates.min_area:
        return Failed(TOO_SMALL, f"mask covers {measures.area:.4f} of the image < {gates.min_area}")
    if measures.area > gates.max_area:
        return Failed(TOO_LARGE, f"mask covers {measures.area:.3f} of the image > {gates.max_area}")
    if measures.inside < gates.min_inside_box:
        return Failed(OUTSIDE, f"{measures.inside:.3f} of the mask inside its box < {gates.min_inside_box}")
    return None


def overlap(mask: np.ndarray, kept: list[np.ndarray]) -> float:
    """The largest share of pixels ``mask`` has in common with one of ``kept``, of the smaller of the two."""
    area = np.count_nonzero(mask)
    shares = [np.count_nonzero(mask & other) / max(1, min(area, np.count_nonzero(other))) for other in kept]
    return float(max(shares, default=0.0))


def overlap_gate(share: float, gates: GateConfig) -> Failed | None:
    if share > gates.max_overlap:
        return Failed(OVERLAP, f"{share:.3f} of the mask shared with a kept object's > {gates.max_overlap}")
    return None


def verify_gate(remaining: float, gates: GateConfig) -> Failed | None:
    """The verifier's confidence that the phrase is still where the object was, after inpainting."""
    if remaining > gates.max_remaining_score:
        return Failed(
            STILL_PRESENT, f"verifier still finds it: {remaining:.3f} > {gates.max_remaining_score}"
        )
    return None
