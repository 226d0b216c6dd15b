"""SAM masks prompted with boxes, through ``segment_anything``'s batched call.

``Sam(batched_input)`` encodes a batch of images at once (the expensive part) and decodes every box of
each image in one call. Images go through the encoder ``batch_size`` at a time, the last batch padded
with copies of its first image, so a photo's masks never depend on which photos shared its batch. The
model is built and its state dict loaded as the replacement generator's SAM is
(:func:`ieiw.pipelines.replacement.sam.load_sam`), from a local file or a verified download.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ieiw.pipelines.grounded.config import SegmenterConfig
from ieiw.pipelines.replacement.sam import SamConfig, load_sam
from ieiw.quality.fixed_batches import padded_chunks
from ieiw.storage.identity import model_identity
from ieiw.storage.models import local_model


class BoxSegmenter:
    """SAM and its input transform; :meth:`segment` draws one mask per box."""

    def __init__(self, config: SegmenterConfig, model: Any, identity: str) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self.config = config
        self.model = model
        self.identity = identity
        self.device = next(model.parameters()).device
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self._lock = threading.Lock()

    def _input(self, image: np.ndarray, boxes: np.ndarray) -> dict[str, Any]:
        resized = self.transform.apply_image(np.ascontiguousarray(image))
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
        prompts = self.transform.apply_boxes_torch(
            torch.as_tensor(boxes, dtype=torch.float32, device=self.device), image.shape[:2]
        )
        return {"image": pixels, "original_size": image.shape[:2], "boxes": prompts}

    @torch.inference_mode()
    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """Per image, one boolean HxW mask per box (``x0, y0, x1, y1`` in pixels) of ``boxes``."""
        jobs = [i for i, b in enumerate(boxes) if len(b)]
        out: list[list[np.ndarray]] = [[] for _ in images]
        for chunk, real in padded_chunks(jobs, self.config.batch_size):
            inputs = [self._input(images[i], boxes[i]) for i in chunk]
            with self._lock:
                outputs = self.model(inputs, multimask_output=self.config.multimask)
            for i, output in zip(chunk[:real], outputs[:real], strict=True):
                masks, quality = output["masks"], output["iou_predictions"]
                best = (
                    quality.argmax(dim=1) if self.config.multimask else torch.zeros_like(quality[:, 0]).long()
                )
                chosen = masks[torch.arange(len(masks), device=masks.device), best]
                out[i] = list(chosen.cpu().numpy().astype(bool))
        return out


def load_segmenter(config: SegmenterConfig) -> BoxSegmenter:
    """SAM of ``config`` (a registry architecture or ``custom``), its weights read safely."""
    checkpoint = local_model(config.checkpoint)
    sam = SamConfig(
        checkpoint=checkpoint,
        model_type=config.model_type,
        architecture=config.architecture,
        device=config.device,
    )
    return BoxSegmenter(config, load_sam(sam), model_identity(config.checkpoint) or config.checkpoint)
