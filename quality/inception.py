"""InceptionV3 pool features (2048-d), the feature space of the original KNN-GIQA and of FID.

The model is torchvision's ``inception_v3`` with its classifier replaced by the identity; the
weights come from a local state dict file such as torchvision's published
``inception_v3_google-0cc3c7bd.pth`` (loaded with ``weights_only=True``) or a ``.safetensors``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ieiw.quality.aesthetic import load_state_dict_safely
from ieiw.quality.embeddings import resolve_device
from ieiw.quality.fixed_batches import padded_chunks

INPUT_SIZE = 299
FEATURE_DIM = 2048
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class InceptionFeatures:
    """Batched InceptionV3 pool features of HxWx3 ``uint8`` images, float32 ``(N, 2048)``."""

    name = "inception"

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int = 32) -> None:
        self.model = model.eval().to(device)
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str = "auto", batch_size: int = 32
    ) -> InceptionFeatures:
        from torchvision.models import inception_v3

        state = load_state_dict_safely(path)
        model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
        model.load_state_dict(state, strict=True)
        model.fc = torch.nn.Identity()
        model.AuxLogits = None
        model.aux_logits = False
        return cls(model, resolve_device(device), batch_size)

    @torch.inference_mode()
    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features of HxWx3 ``uint8`` images, ``batch_size`` per forward pass exactly (padded, see
        :mod:`ieiw.quality.fixed_batches`): an image's features do not depend on its batch-mates."""
        out = []
        for chunk, real in padded_chunks(images, self.batch_size):
            pixels = torch.cat([_to_tensor(a) for a in chunk[:real]])
            pixels = torch.cat([pixels, pixels[:1].expand(len(chunk) - real, *pixels.shape[1:])])
            out.append(self.model(pixels.to(self.device)).float().cpu().numpy()[:real])
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM), np.float32)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images are HxWx3 uint8 arrays, got {image.dtype} {image.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    tensor = F.interpolate(tensor, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (tensor - _MEAN) / _STD
