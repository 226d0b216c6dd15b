"""Paint-by-Example through diffusers' ``PaintByExamplePipeline`` (pinned: diffusers 0.42.1).

In diffusers 0.42.1 the pipeline lives under ``diffusers.pipelines.deprecated.paint_by_example``
and ``PaintByExamplePipeline.from_pretrained(folder)`` fails to resolve its image encoder, so each
component is loaded with its own ``from_pretrained(model, subfolder=...)`` and the pipeline is
built from them. ``model`` is a hub id (``Fantasy-Studio/Paint-by-Example``) or a local folder in
the same layout (what ``save_pretrained`` writes).

Each region is painted in a square window around it at ``resolution``; the painted window is pasted
back inside the mask only, so the rest of the image keeps its pixels and resolution. A square window
is at most the image's short side: a region whose edit reaches beyond it (a wide object in a
landscape photo) is, with ``wide_regions: letterbox``, painted in a window spanning the whole edit,
padded to a square (mirrored image, mask empty there) and cropped back after painting; with
``wide_regions: drop`` it is dropped as ``region_wider_than_window`` instead of half-replaced.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import torch
from PIL import Image

from ieiw.pipelines.replacement.painting import PaintConfig, Painted, PaintError, PaintJob, Refused, dilate
from ieiw.storage.identity import model_identity
from ieiw.storage.models import pretrained


def _model_index(name: str, options: dict) -> dict:
    if os.path.isdir(name):
        path = os.path.join(name, "model_index.json")
    else:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name, "model_index.json", **options)
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def resolve_dtype(device: torch.device, precision: str) -> torch.dtype:
    """fp16/bf16 on GPU (``auto``: bf16 where supported), fp32 on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return torch.float32
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def load_paint_by_example(model: str, device: torch.device, dtype: torch.dtype):
    """Load every component with its own loader and build the pipeline from them."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example import (
        PaintByExampleImageEncoder,
        PaintByExamplePipeline,
    )
    from transformers import CLIPImageProcessor

    name, options = pretrained(model)  # a hub id at its pinned commit, or a folder
    index = _model_index(name, options)
    scheduler_name = index.get("scheduler", [None, "PNDMScheduler"])[1]
    scheduler_class = getattr(diffusers, scheduler_name, None)
    if scheduler_class is None:
        raise ValueError(f"{model}: unknown scheduler class {scheduler_name}")
    pipe = PaintByExamplePipeline(
        vae=AutoencoderKL.from_pretrained(name, subfolder="vae", torch_dtype=dtype, **options),
        image_encoder=PaintByExampleImageEncoder.from_pretrained(
            name, subfolder="image_encoder", torch_dtype=dtype, **options
        ),
        unet=UNet2DConditionModel.from_pretrained(name, subfolder="unet", torch_dtype=dtype, **options),
        scheduler=scheduler_class.from_pretrained(name, subfolder="scheduler", **options),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor.from_pretrained(name, subfolder="feature_extractor", **options),
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def paint_window(
    bbox: tuple[int, int, int, int], height: int, width: int, scale: float
) -> tuple[int, int, int, int]:
    """A square ``(x0, y0, x1, y1)`` around the box, ``scale`` times its larger side, inside the image."""
    x, y, w, h = bbox
    side = int(min(max(max(w, h) * scale, 64), height, width))
    cx, cy = x + w / 2, y + h / 2
    x0 = int(np.clip(round(cx - side / 2), 0, width - side))
    y0 = int(np.clip(round(cy - side / 2), 0, height - side))
    return x0, y0, x0 + side, y0 + side


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a bool mask's pixels."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def letterbox_window(
    bbox: tuple[int, int, int, int], edit: tuple[int, int, int, int], height: int, width: int, scale: float
) -> tuple[int, int, int, int]:
    """A rectangle ``(x0, y0, x1, y1)`` inside the image around the box, ``scale`` times its larger side
    on each axis where the image allows, and spanning the whole ``edit`` box."""
    x, y, w, h = bbox
    want = max(max(w, h) * scale, 64)
    cx, cy = x + w / 2, y + h / 2
    x0, x1 = int(max(0, round(cx - want / 2))), int(min(width, round(cx + want / 2)))
    y0, y1 = int(max(0, round(cy - want / 2))), int(min(height, round(cy + want / 2)))
    return min(x0, edit[0]), min(y0, edit[1]), max(x1, edit[2]), max(y1, edit[3])


def to_square(pixels: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """``pixels`` padded to a square by mirroring (equally on both sides); returns the offset of the
    original inside it, ``(top, left)``."""
    height, width = pixels.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pads = [(top, side - height - top), (left, side - width - left)] + [(0, 0)] * (pixels.ndim - 2)
    return np.pad(pixels, pads, mode="symmetric"), (top, left)


class PaintByExamplePainter:
    backend = "paint_by_example"

    def __init__(self, config: PaintConfig) -> None:
        self.config = config
        self.model = model_identity(config.model)  # by content: samples' keys never hold a local path
        device = config.device
        self.device = torch.device(
            "cuda"
            if device == "auto" and torch.cuda.is_available()
            else ("cpu" if device == "auto" else device)
        )
        self.dtype = resolve_dtype(self.device, config.precision)
        self.pipe = load_paint_by_example(config.model or "", self.device, self.dtype)
        self.batch_size = config.batch_size
        self._lock = threading.Lock()  # the scheduler keeps state per call: batches in threads take turns

    def paint(self, jobs: list[PaintJob]) -> list[Painted | Refused]:
        """Paint every job that fits (in batches); a wide one under ``drop`` comes back ``Refused``."""
        out: list[Painted | Refused | None] = [None] * len(jobs)
        windows = {}
        for number, job in enumerate(jobs):
            window = self._window(job)
            if isinstance(window, Refused):
                out[number] = window
            else:
                windows[number] = window
        order = list(windows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            painted = self._paint_batch([jobs[n] for n in chunk], [windows[n] for n in chunk])
            for number, result in zip(chunk, painted, strict=True):
                out[number] = result
        return out  # type: ignore[return-value]

    def _window(self, job: PaintJob) -> tuple[np.ndarray, tuple[int, int, int, int]] | Refused:
        """The job's edit mask and the window it is painted in: the square of :func:`paint_window`, or
        (for an edit reaching beyond that square) a letterboxed rectangle, or a refusal."""
        height, width = job.image.shape[:2]
        edit = self._edit_mask(job)
        square = paint_window(job.bbox, height, width, self.config.window_scale)
        if not edit.any():
            return edit, square
        box = box_of(edit)
        x0, y0, x1, y1 = square
        if x0 <= box[0] and y0 <= box[1] and box[2] <= x1 and box[3] <= y1:
            return edit, square
        if self.config.wide_regions == "drop":
            return Refused(
                "region_wider_than_window",
                f"the edit box {box[2] - box[0]}x{box[3] - box[1]} does not fit the {x1 - x0}px square "
                f"window of a {width}x{height} image",
            )
        return edit, letterbox_window(job.bbox, box, height, width, self.config.window_scale)

    def _edit_mask(self, job: PaintJob) -> np.ndarray:
        if self.config.mask_mode == "box":
            x, y, w, h = job.bbox
            box = np.zeros_like(job.mask, dtype=bool)
            box[y : y + h, x : x + w] = True
            return dilate(box, self.config.dilation)
        return dilate(job.mask, self.config.dilation)

    @torch.inference_mode()
    def _paint_batch(
        self, jobs: list[PaintJob], windows: list[tuple[np.ndarray, tuple[int, int, int, int]]]
    ) -> list[Painted]:
        size = self.config.resolution
        images, masks, examples, offsets = [], [], [], []
        for job, (edit, (x0, y0, x1, y1)) in zip(jobs, windows, strict=True):
            pixels, offset = to_square(job.image[y0:y1, x0:x1])
            region, _ = to_square(edit[y0:y1, x0:x1])
            region[: offset[0]] = region[offset[0] + (y1 - y0) :] = False  # no edit in the padding
            region[:, : offset[1]] = region[:, offset[1] + (x1 - x0) :] = False
            offsets.append(offset)
            images.append(Image.fromarray(pixels).resize((size, size), Image.BICUBIC))
            masks.append(Image.fromarray(region.astype(np.uint8) * 255).resize((size, size)))
            examples.append(Image.fromarray(job.reference))
        generators = [torch.Generator(device="cpu").manual_seed(job.seed) for job in jobs]
        try:
            with self._lock:
                result = self.pipe(
                    example_image=examples,
                    image=images,
                    mask_image=masks,
                    height=size,
                    width=size,
                    num_inference_steps=self.config.steps,
                    guidance_scale=self.config.guidance_scale,
                    generator=generators,
                    output_type="np",
                )
        except (RuntimeError, ValueError) as error:
            raise PaintError(f"Paint-by-Example failed on a batch of {len(jobs)}: {error}") from error
        out = []
        for job, (edit, (x0, y0, x1, y1)), (top, left), painted in zip(
            jobs, windows, offsets, result.images, strict=True
        ):
            side = max(x1 - x0, y1 - y0)
            pixels = np.clip(np.asarray(painted) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            pixels = np.asarray(Image.fromarray(pixels).resize((side, side), Image.BICUBIC))
            pixels = pixels[top : top + (y1 - y0), left : left + (x1 - x0)]
            edit = edit.copy()
            outside = np.ones_like(edit)
            outside[y0:y1, x0:x1] = False
            edit[outside] = False  # the edit ends at the window (it spans a letterboxed edit whole)
            target = job.image.copy()
            inside = edit[y0:y1, x0:x1]
            target[y0:y1, x0:x1][inside] = pixels[inside]
            out.append(Painted(target=target, mask=edit.astype(np.uint8) * 255))
        return out
