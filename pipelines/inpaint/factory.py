"""Build an inpainter from its config section."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, model_serializer, model_validator

from ieiw.pipelines.inpaint.base import Inpainter

CROP_SETTINGS = ("strategy", "crop_margin", "window")


class InpaintConfig(BaseModel):
    """``backend: opencv`` needs nothing; ``backend: lama`` needs ``model`` (a path or URL to big-lama.pt).

    LaMa's ``strategy``: ``whole`` runs each image at its own size (padded to a multiple of 8), so only
    images of one padded size share a batch; ``crop`` inpaints a square window around the mask grown by
    ``crop_margin`` pixels (lama-cleaner's crop strategy), resized to ``window`` x ``window``, so windows
    of images of any size run in one batch (:mod:`ieiw.pipelines.inpaint.crops`). The strategy and its
    sizes shape the targets, so they are in the removal fingerprint and the sample keys; with
    ``whole`` (the default) they are left out of the dump, so fingerprints and keys stay what they were
    before the strategies existed.
    """

    backend: Literal["opencv", "lama"] = "opencv"
    model: str | None = None
    model_md5: str | None = None
    device: str | None = None
    batch_size: int = 4
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
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if self.strategy == "whole":
            for name in CROP_SETTINGS:
                data.pop(name, None)
        return data


def build_inpainter(config: InpaintConfig) -> Inpainter:
    if config.backend == "opencv":
        from ieiw.pipelines.inpaint.opencv_backend import OpenCVInpainter

        return OpenCVInpainter(radius=config.opencv_radius, method=config.opencv_method)
    from ieiw.pipelines.inpaint.lama import LamaInpainter, resolve_checkpoint

    if not config.model:
        raise ValueError("inpaint.backend 'lama' needs inpaint.model: a path or URL to big-lama.pt")
    path = resolve_checkpoint(config.model, md5=config.model_md5)
    return LamaInpainter(
        path,
        device=config.device,
        batch_size=config.batch_size,
        strategy=config.strategy,
        crop_margin=config.crop_margin,
        window=config.window,
    )
