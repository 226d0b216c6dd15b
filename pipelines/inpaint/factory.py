"""Build an inpainter from its config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from ieiw.pipelines.inpaint.base import Inpainter


class InpaintConfig(BaseModel):
    """``backend: opencv`` needs nothing; ``backend: lama`` needs ``model`` (a path or URL to big-lama.pt)."""

    backend: Literal["opencv", "lama"] = "opencv"
    model: str | None = None
    model_md5: str | None = None
    device: str | None = None
    batch_size: int = 4
    opencv_radius: int = 5
    opencv_method: Literal["telea", "ns"] = "telea"


def build_inpainter(config: InpaintConfig) -> Inpainter:
    if config.backend == "opencv":
        from ieiw.pipelines.inpaint.opencv_backend import OpenCVInpainter

        return OpenCVInpainter(radius=config.opencv_radius, method=config.opencv_method)
    from ieiw.pipelines.inpaint.lama import LamaInpainter, resolve_checkpoint

    if not config.model:
        raise ValueError("inpaint.backend 'lama' needs inpaint.model: a path or URL to big-lama.pt")
    path = resolve_checkpoint(config.model, md5=config.model_md5)
    return LamaInpainter(path, device=config.device, batch_size=config.batch_size)
