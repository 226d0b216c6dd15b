"""A tiny TorchScript module with big-lama's call signature, saved as lama-cleaner's checkpoint is."""

from __future__ import annotations

import torch


class TinyLama(torch.nn.Module):
    """``forward(image, mask)``: RGB in [0, 1] and a binary mask, both padded to a multiple of 8."""

    def __init__(self, fail_wider_than: int = 1 << 30) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)
        self.fail_wider_than = fail_wider_than

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape[2] % 8 != 0 or image.shape[3] % 8 != 0:
            raise RuntimeError("input is not padded to a multiple of 8")
        if float(image.max()) > 1.0 or float(image.min()) < 0.0:
            raise RuntimeError("image is not in [0, 1]")
        if image.shape[3] > self.fail_wider_than:
            raise RuntimeError("simulated failure on a wide input")
        predicted = torch.sigmoid(self.conv(torch.cat([image * (1 - mask), mask], dim=1)))
        return predicted * mask + image * (1 - mask)


def save_tiny_lama(path: str, fail_wider_than: int = 1 << 30) -> str:
    torch.manual_seed(0)
    torch.jit.script(TinyLama(fail_wider_than)).save(path)
    return path
