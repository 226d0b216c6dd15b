"""Inpainting backends behind one batched interface."""

from pipelines.inpaint.base import Inpainter, InpaintError
from pipelines.inpaint.factory import InpaintConfig, build_inpainter

__all__ = ["Inpainter", "InpaintError", "InpaintConfig", "build_inpainter"]
