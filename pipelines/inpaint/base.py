"""The interface every inpainting backend implements."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class InpaintError(RuntimeError):
    """An inpainting backend could not process an image."""


class Inpainter(Protocol):
    """Fills the white (255) pixels of each mask from the rest of its image.

    ``backend`` and ``model`` name what made a target, and ``settings()`` every parameter that
    changes the output; they go into each sample's generator record and key.
    """

    backend: str
    model: str | None

    def settings(self) -> dict[str, Any]: ...

    def inpaint(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]: ...


def composite(source: np.ndarray, filled: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Keep ``source`` outside the mask and ``filled`` inside it."""
    inside = (mask > 127)[..., None]
    return np.where(inside, filled, source).astype(np.uint8)
