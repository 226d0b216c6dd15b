"""Edit images with a trained model: one image, a folder, or the samples of shards.

The pipeline is loaded once by the caller (:func:`load_edit_pipeline`: the SD or the SDXL InstructPix2Pix
pipeline, whichever the checkpoint is) and reused for every image.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ieiw.model.family import SDXL, edit_pipeline_class, model_family, size_kwargs
from ieiw.storage.shards import iter_samples

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class EditSettings(BaseModel):
    """Sampling settings of an edit (InstructPix2Pix's defaults)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(default=20, ge=1)
    text_guidance: float = 7.5
    image_guidance: float = 1.5
    seed: int = 0
    resolution: int = 512  # the long side; both sides are rounded to what the UNet accepts


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_edit_pipeline(model: str, device: str = "auto", half: bool | None = None):
    """Open a trained model folder (or hub id) in diffusers layout, once per process, in the
    InstructPix2Pix pipeline of its family (its ``model_index.json`` says SD or SDXL)."""
    torch_device = resolve_device(device)
    if half is None:
        half = torch_device.type == "cuda"
    dtype = torch.float16 if half else torch.float32
    family = model_family(model)
    if family == SDXL:
        extra = {"add_watermarker": False}
    else:
        extra = {"safety_checker": None, "requires_safety_checker": False}
    pipe = edit_pipeline_class(family).from_pretrained(model, dtype=dtype, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch_device)


def size_multiple(pipe) -> int:
    """Image sides must be multiples of the VAE's and the UNet's total downsampling."""
    unet_levels = len(pipe.unet.config.block_out_channels) - 1
    return pipe.vae_scale_factor * 2**unet_levels


def fit_size(width: int, height: int, long_side: int, multiple: int) -> tuple[int, int]:
    """Scale so the long side is ``long_side``; round both sides to ``multiple``."""
    scale = long_side / max(width, height)
    return (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )


def edit_image(pipe, image: np.ndarray | Image.Image, instruction: str, settings: EditSettings) -> np.ndarray:
    """Edit one image; returns an HxWx3 ``uint8`` array at the working resolution."""
    return edit_images(pipe, [image], [instruction], settings)[0]


def edit_images(pipe, images: list, instructions: list[str], settings: EditSettings) -> list[np.ndarray]:
    """Edit same-shaped images in one batch (each resized to the working resolution)."""
    if len(images) != len(instructions):
        raise ValueError(f"{len(images)} images for {len(instructions)} instructions")
    pil = [i if isinstance(i, Image.Image) else Image.fromarray(i) for i in images]
    pil = [i.convert("RGB") for i in pil]
    size = fit_size(*pil[0].size, settings.resolution, size_multiple(pipe))
    pil = [i.resize(size, Image.Resampling.BICUBIC) for i in pil]
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)
    result = pipe(
        list(instructions),
        image=pil,
        num_inference_steps=settings.steps,
        guidance_scale=settings.text_guidance,
        image_guidance_scale=settings.image_guidance,
        generator=generator,
        output_type="np",
        **size_kwargs(pipe, *size),
    )
    return [(np.clip(a, 0, 1) * 255).round().astype(np.uint8) for a in result.images]


@dataclass
class BatchReport:
    """What a batch edit wrote and what it skipped, by reason."""

    written: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def edit_folder(pipe, folder: str, instruction: str, out_dir: str, settings: EditSettings) -> BatchReport:
    """Edit every image of ``folder`` with one instruction; writes ``<out_dir>/<name>.png``."""
    report = BatchReport()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in tqdm(files, desc="editing", unit="image"):
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            report.skipped["undecodable"] += 1
            log.warning("skipping %s: %s", path, exc)
            continue
        out = Path(out_dir) / f"{path.stem}.png"
        Image.fromarray(edit_image(pipe, image, instruction, settings)).save(out)
        report.written.append(str(out))
    return report


def edit_shards(
    pipe, shard_urls: Iterable[str], out_dir: str, settings: EditSettings, limit: int | None = None
) -> BatchReport:
    """Edit each sample's source with its own instruction; writes ``<out_dir>/<key>.png``."""
    report = BatchReport()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for sample in tqdm(_limited(iter_samples(shard_urls), limit), desc="editing", unit="sample"):
        out = Path(out_dir) / f"{sample.key}.png"
        Image.fromarray(edit_image(pipe, sample.source, sample.meta.instruction, settings)).save(out)
        report.written.append(str(out))
    return report


def _limited(items: Iterator, limit: int | None) -> Iterator:
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item
