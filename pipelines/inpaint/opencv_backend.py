"""Classical inpainting with OpenCV (Telea or Navier-Stokes): the backend for runs without weights."""

from __future__ import annotations

from typing import Any, Literal

import cv2
import numpy as np

from ieiw.pipelines.inpaint.base import composite

_METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}


class OpenCVInpainter:
    backend = "opencv"
    model = None

    def __init__(self, radius: int = 5, method: Literal["telea", "ns"] = "telea") -> None:
        self.radius = radius
        self.method = method

    def settings(self) -> dict[str, Any]:
        return {"radius": self.radius, "method": self.method}

    def inpaint(self, images: list[np.ndarray], masks: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for image, mask in zip(images, masks, strict=True):
            binary = np.where(mask > 127, 255, 0).astype(np.uint8)
            filled = cv2.inpaint(np.ascontiguousarray(image), binary, self.radius, _METHODS[self.method])
            out.append(composite(image, filled, binary))
        return out
