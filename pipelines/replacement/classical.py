"""The classical backend for runs without weights: clear the region, then seamlessly clone the
reference object into its box (``cv2.seamlessClone``). Samples name it ``seamless_clone``.

The clone mask is the reference's mask grown by a margin of its own surroundings: Poisson blending
keeps gradients, so the object keeps its contrast to its old background while the colours fit in.
"""

from __future__ import annotations

import cv2
import numpy as np

from ieiw.pipelines.inpaint.opencv_backend import OpenCVInpainter
from ieiw.pipelines.replacement.painting import PaintConfig, Painted, PaintError, PaintJob, dilate

PAD = 3  # seamlessClone needs a margin around the source mask


class SeamlessClonePainter:
    backend = "seamless_clone"
    model = None

    def __init__(self, config: PaintConfig) -> None:
        self.config = config
        self.inpainter = OpenCVInpainter(radius=config.inpaint_radius)

    def paint(self, jobs: list[PaintJob]) -> list[Painted]:
        return [self._paint_one(job) for job in jobs]

    def _paint_one(self, job: PaintJob) -> Painted:
        height, width = job.image.shape[:2]
        region = dilate(job.mask, self.config.dilation)
        cleared = self.inpainter.inpaint([job.image], [region.astype(np.uint8) * 255])[0]
        x, y, w, h = job.bbox
        ref_h, ref_w = job.reference_mask.shape
        scale = self.config.fit * min(w / ref_w, h / ref_h)
        new_w, new_h = max(2, int(round(ref_w * scale))), max(2, int(round(ref_h * scale)))
        new_w, new_h = min(new_w, width - 2 * PAD - 2), min(new_h, height - 2 * PAD - 2)
        if new_w < 2 or new_h < 2:
            raise PaintError(f"image {width}x{height} too small to clone into")
        patch = cv2.resize(job.reference, (new_w, new_h), interpolation=cv2.INTER_AREA)
        patch_mask = cv2.resize(
            job.reference_mask.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_NEAREST
        )
        if not patch_mask.any():
            raise PaintError("the reference mask vanished when resized to the region")
        margin = max(2, int(round(self.config.clone_margin * max(new_w, new_h))))
        patch_mask = dilate(patch_mask.astype(bool), margin).astype(np.uint8)
        patch = cv2.copyMakeBorder(patch, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE)
        patch_mask = cv2.copyMakeBorder(patch_mask, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=0) * 255
        box_w, box_h = new_w + 2 * PAD, new_h + 2 * PAD
        cx = int(np.clip(x + w // 2, box_w // 2 + 1, width - (box_w - box_w // 2) - 1))
        cy = int(np.clip(y + h // 2, box_h // 2 + 1, height - (box_h - box_h // 2) - 1))
        try:
            target = cv2.seamlessClone(
                np.ascontiguousarray(patch),
                np.ascontiguousarray(cleared),
                patch_mask,
                (cx, cy),
                cv2.NORMAL_CLONE,
            )
        except cv2.error as error:
            raise PaintError(f"seamlessClone failed: {error}") from error
        changed = region | (np.abs(target.astype(np.int16) - job.image.astype(np.int16)).max(axis=2) > 0)
        return Painted(target=target, mask=changed.astype(np.uint8) * 255)
