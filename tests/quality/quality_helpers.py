"""Plain helpers of the quality tests (importable by name; conftest modules are not)."""

from __future__ import annotations

import numpy as np

TINY_CLIP = "TinyCLIP-ieiw-quality-test"
TINY_CLIP_CONFIG = {
    "embed_dim": 768,  # the aesthetic head's input size, as with ViT-L/14
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def picture(seed: int, size: int = 48) -> np.ndarray:
    """A distinct synthetic photo: smooth colour gradients plus shapes, so hashes differ per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    channels = [np.sin(rng.uniform(1, 9) * x + rng.uniform(1, 9) * y + rng.uniform(0, 6)) for _ in range(3)]
    image = (np.stack(channels, -1) * 110 + 128).astype(np.uint8)
    for _ in range(3):
        r0, c0 = rng.integers(0, size - 12, 2)
        image[r0 : r0 + 12, c0 : c0 + 12] = rng.integers(0, 255, 3)
    return image
