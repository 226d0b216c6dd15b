"""LaMa through the big-lama TorchScript checkpoint that lama-cleaner distributes (``big-lama.pt``).

The model is called as ``model(image, mask)`` with ``image`` a float RGB batch in [0, 1]
(N x 3 x H x W) and ``mask`` a binary float batch (N x 1 x H x W), both padded to a multiple of 8
with symmetric padding; it returns the inpainted RGB batch in [0, 1]. We reproduce that processing
rather than depend on lama-cleaner, whose pins conflict with this stack.

Two strategies: ``whole`` (each image at its own padded size; only equal sizes share a batch) and
``crop`` (a square window around each mask resized to one size, windows of any images batched together,
pasted back inside the mask: :mod:`ieiw.pipelines.inpaint.crops`).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ieiw.pipelines.inpaint.base import InpaintError, composite
from ieiw.pipelines.inpaint.crops import Window, cut, mask_window, paste_window
from ieiw.storage.identity import model_identity
from ieiw.storage.models import local_model

BIG_LAMA_URL = "https://github.com/Sanster/models/releases/download/add_big_lama/big-lama.pt"
BIG_LAMA_MD5 = "e3aa4aaa15225a33ec84f9f4bc47e500"

def resolve_checkpoint(model: str) -> str:
    """A local path for ``model``: the path itself, or a URL (``#md5=``/``#sha256=`` verified) downloaded
    once into the model cache (:func:`ieiw.storage.models.local_model`)."""
    return local_model(model)


def load_lama(path: str, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """Load the TorchScript checkpoint (TorchScript archives hold no pickled Python objects)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # big-lama ships only as TorchScript
        module = torch.jit.load(path, map_location="cpu")
    return module.to(device).eval()


def pad_to_modulo(array: np.ndarray, modulo: int) -> np.ndarray:
    """Pad the first two axes up to a multiple of ``modulo`` with symmetric padding (as lama-cleaner)."""
    height, width = array.shape[:2]
    pad_h = (-height) % modulo
    pad_w = (-width) % modulo
    if not pad_h and not pad_w:
        return array
    pads = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pads, mode="symmetric")


class LamaInpainter:
    """Batched LaMa: whole images of the same padded size, or equal-size windows of any images."""

    backend = "lama"

    def __init__(
        self,
        checkpoint: str,
        device: str | None = None,
        batch_size: int = 4,
        pad_modulo: int = 8,
        strategy: str = "whole",
        crop_margin: int = 128,
        window: int = 512,
    ) -> None:
        auto = device in (None, "", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if auto else device)
        self.module = load_lama(checkpoint, self.device)
        self.model = model_identity(checkpoint)  # by content: the same file anywhere gives the same keys
        self.batch_size = batch_size
        self.pad_modulo = pad_modulo
        if strategy not in ("whole", "crop"):
            raise ValueError(f"unknown LaMa strategy {strategy!r}: whole or crop")
        self.strategy, self.crop_margin, self.window = strategy, crop_margin, window

    def settings(self) -> dict[str, Any]:
        if self.strategy == "whole":
            return {"pad_modulo": self.pad_modulo}  # as before the strategies: the same keys
        return {
            "pad_modulo": self.pad_modulo,
            "strategy": self.strategy,
            "crop_margin": self.crop_margin,
            "window": self.window,
        }

    def inpaint(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        if self.strategy == "crop":
            return self.inpaint_windows(images, masks)
        return self.inpaint_whole(images, masks)

    def inpaint_whole(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """Each image at its own size, padded to a multiple of ``pad_modulo``; equal sizes batched."""
        padded = [
            (pad_to_modulo(i, self.pad_modulo), pad_to_modulo(m, self.pad_modulo))
            for i, m in zip(images, masks, strict=True)
        ]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (image, _) in enumerate(padded):
            groups[image.shape[:2]].append(index)
        outputs: list[np.ndarray | None] = [None] * len(images)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                filled = self._run([padded[i][0] for i in chunk], [padded[i][1] for i in chunk])
                for i, result in zip(chunk, filled, strict=True):
                    height, width = images[i].shape[:2]
                    outputs[i] = composite(images[i], result[:height, :width], masks[i])
        assert all(o is not None for o in outputs)
        return outputs  # type: ignore[return-value]

    @torch.inference_mode()
    def inpaint_windows(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        """A square around each mask resized to ``window`` on the device; ``batch_size`` windows of any
        images per network call; each result resized back and pasted inside its mask."""
        outputs: list[np.ndarray] = [image.copy() for image in images]  # an empty mask changes nothing
        jobs = [(i, w) for i, m in enumerate(masks) if (w := mask_window(m, self.crop_margin, self.window))]
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            windows = [self._to_window(images[i], masks[i], win) for i, win in chunk]
            image = torch.cat([w[0] for w in windows])
            mask = torch.cat([w[1] for w in windows])
            filled = self._call(image, mask, len(chunk))
            for (index, win), result in zip(chunk, filled, strict=True):
                outputs[index] = paste_window(
                    images[index], masks[index], win, self._from_window(result, win)
                )
        return outputs

    def _to_window(
        self, image: np.ndarray, mask: np.ndarray, win: Window
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The window of the image (RGB in [0, 1]) and its binary mask, ``window`` x ``window``, on the
        device: box-filtered down (a downscaled pixel the mask touches stays masked), bicubic up."""
        window_pixels = np.array(cut(image, win), copy=True)  # a read-only view of a decoded image is fine
        pixels = torch.from_numpy(window_pixels).to(self.device).permute(2, 0, 1)[None].float().div(255.0)
        region = torch.from_numpy(cut((mask > 127).astype(np.float32), win, "constant")).to(self.device)[
            None, None
        ]
        if win.side == self.window:
            return pixels, region
        size = (self.window, self.window)
        if win.side > self.window:
            pixels = F.interpolate(pixels, size=size, mode="area")
            region = F.interpolate(region, size=size, mode="area")
        else:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False)
            region = F.interpolate(region, size=size, mode="nearest")
        return pixels.clamp(0, 1), (region > 0).float()

    def _from_window(self, result: torch.Tensor, win: Window) -> np.ndarray:
        """An inpainted window back at the square's own size, as uint8 RGB."""
        result = result[None].float()
        if win.side != self.window:
            grow = win.side > self.window
            mode = {"mode": "bicubic", "align_corners": False} if grow else {"mode": "area"}
            result = F.interpolate(result, size=(win.side, win.side), **mode)
        return result[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()

    @torch.inference_mode()
    def _run(self, images: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
        image = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255.0)
        mask = torch.from_numpy((np.stack(masks) > 127).astype(np.float32))[:, None]
        result = self._call(image.to(self.device), mask.to(self.device), len(images))
        result = result.float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1)
        return result.cpu().numpy()

    def _call(self, image: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
        """The network on a batch on the device (image in [0, 1], binary mask); its failures are
        :class:`InpaintError`, so the stage can retry image by image."""
        try:
            return self.module(image, mask)
        except (RuntimeError, torch.jit.Error) as error:
            raise InpaintError(f"LaMa failed on a batch of {count}: {error}") from error
