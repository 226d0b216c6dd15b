"""Inpainting backends behind one batched interface."""

from ieiw.pipelines.inpaint.base import Inpainter, InpaintError
from ieiw.pipelines.inpaint.factory import InpaintConfig, build_inpainter

__all__ = ["Inpainter", "InpaintError", "InpaintConfig", "build_inpainter"]
