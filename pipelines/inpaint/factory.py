"""Build an inpainter from its config section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from ieiw.pipelines.inpaint.base import Inpainter
from ieiw.storage.config import model_ref, operational


class InpaintConfig(BaseModel):
    """``backend: opencv`` needs nothing; ``backend: lama`` needs ``model`` (a path or URL to big-lama.pt).

    LaMa's ``strategy``: ``whole`` runs each image at its own size (padded to a multiple of 8), so only
    images of one padded size share a batch; ``crop`` inpaints a square window around the mask grown by
    ``crop_margin`` pixels (lama-cleaner's crop strategy), resized to ``window`` x ``window``, so windows
    of images of any size run in one batch (:mod:`ieiw.pipelines.inpaint.crops`). The strategy and its
    sizes shape the targets, so they are in the removal fingerprint and the sample keys.
    """

    model_config = ConfigDict(extra="forbid")

    backend: Literal["opencv", "lama"] = "opencv"
    model: str | None = model_ref(None)
    model_md5: str | None = operational(None)  # checks a download; the identity is the file's content
    device: str | None = operational(None)
    batch_size: int = operational(4)
    opencv_radius: int = 5
    opencv_method: Literal["telea", "ns"] = "telea"
    strategy: Literal["whole", "crop"] = "whole"
    crop_margin: int = 128
    window: int = 512

    @model_validator(mode="after")
    def _check_strategy(self) -> InpaintConfig:
        if self.strategy == "crop" and self.backend != "lama":
            raise ValueError("inpaint.strategy 'crop' is for backend 'lama' (OpenCV inpaints at full size)")
        if self.window < 8 or self.window % 8:
            raise ValueError(
                f"inpaint.window must be a positive multiple of 8 (LaMa's padding), not {self.window}"
            )
        if self.crop_margin < 0:
            raise ValueError("inpaint.crop_margin must be >= 0")
        if self.model_md5 and self.model and "://" in self.model and "#" not in self.model:
            self.model = f"{self.model}#md5={self.model_md5}"  # the download is verified against it
        return self


def build_inpainter(config: InpaintConfig) -> Inpainter:
    if config.backend == "opencv":
        from ieiw.pipelines.inpaint.opencv_backend import OpenCVInpainter

        return OpenCVInpainter(radius=config.opencv_radius, method=config.opencv_method)
    from ieiw.pipelines.inpaint.lama import LamaInpainter, resolve_checkpoint

    if not config.model:
        raise ValueError("inpaint.backend 'lama' needs inpaint.model: a path or URL to big-lama.pt")
    path = resolve_checkpoint(config.model)
    return LamaInpainter(
        path,
        device=config.device,
        batch_size=config.batch_size,
        strategy=config.strategy,
        crop_margin=config.crop_margin,
        window=config.window,
    )
