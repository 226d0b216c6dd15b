"""Edit images with a trained model: one image, a folder, or the samples of shards.

The pipeline is loaded once by the caller (:func:`load_edit_pipeline`: the SD or the SDXL InstructPix2Pix
pipeline, whichever the checkpoint is) and reused for every image.
"""

from __future__ import annotations

import html
import json
import logging
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ieiw.model.family import SDXL, edit_pipeline_class, model_family, size_kwargs
from ieiw.storage.gallery import GALLERY_STYLE, thumbnail_data_uri
from ieiw.storage.models import pretrained
from ieiw.storage.shards import expand_shard_urls, iter_samples

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
    """Open a trained model folder (or hub id, ``owner/name@commit`` at that commit) in diffusers layout,
    once per process, in the InstructPix2Pix pipeline of its family (its ``model_index.json`` says SD or
    SDXL). Check the reference first (:func:`ieiw.model.references.pipeline_reference`) for a one-line
    error when it is not there."""
    torch_device = resolve_device(device)
    if half is None:
        half = torch_device.type == "cuda"
    dtype = torch.float16 if half else torch.float32
    family = model_family(model)
    if family == SDXL:
        extra = {"add_watermarker": False}
    else:
        extra = {"safety_checker": None, "requires_safety_checker": False}
    name, pinned = pretrained(model)  # a hub id pinned to a commit loads exactly it
    pipe = edit_pipeline_class(family).from_pretrained(name, dtype=dtype, **extra, **pinned)
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
    """What a batch edit wrote and what it skipped, by reason; ``index`` and ``page`` are its
    ``index.jsonl`` and ``index.html``."""

    written: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    index: str = ""
    page: str = ""


INDEX = "index.jsonl"
PAGE = "index.html"
PAGE_STYLE = ".pair img{width:256px;height:auto} .settings{font-family:monospace;font-size:12px}"


class EditIndex:
    """The index of a batch edit, beside its images: ``index.jsonl``, one line per edit (its file, key,
    instruction, where its source came from, the model and the settings), and ``index.html`` (source |
    edit | instruction, the source as an embedded thumbnail), both written as the edits are made (the
    page is put together when the batch ends). Both list this run's edits; the page keeps each image's
    aspect ratio."""

    def __init__(self, out_dir: str, settings: EditSettings, model: str | None) -> None:
        self.out = Path(out_dir)
        self.settings = {**settings.model_dump(), "model": model}
        self.count = 0
        self.lines = open(self.out / INDEX, "w", encoding="utf-8")  # both closed by close()
        self.body = open(self.out / f".{PAGE}.body", "w", encoding="utf-8")

    def add(self, edit: Path, image: np.ndarray, instruction: str, **where: Any) -> None:
        """Index one edit; ``image`` is its source (a thumbnail goes on the page), ``where`` says where
        it came from (key, task, shard or source file)."""
        row = {"edit": edit.name, "instruction": instruction, **where, "settings": self.settings}
        self.lines.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
        self.lines.flush()
        about = " · ".join(str(row[k]) for k in SHOWN if k in row)
        self.body.write(
            "<div class='pair'>"
            f"<figure><img src='{thumbnail_data_uri(image)}' alt=''><figcaption>source</figcaption></figure>"
            f"<figure><img src='{html.escape(urllib.parse.quote(edit.name))}' alt=''>"
            "<figcaption>edit</figcaption></figure>"
            f"<div class='text'><div class='instruction'>{html.escape(instruction)}</div>"
            f"<div class='meta'>{html.escape(about)}</div></div></div>\n"
        )
        self.count += 1

    def close(self, report: BatchReport) -> BatchReport:
        self.lines.close()
        self.body.close()
        body = self.out / f".{PAGE}.body"
        settings = ", ".join(f"{k} {v}" for k, v in self.settings.items() if k != "model")
        head = (
            "<!doctype html><html><head><meta charset='utf-8'><title>ieiw edit</title>"
            f"<style>{GALLERY_STYLE}{PAGE_STYLE}</style></head><body>"
            f"<h1>{self.count} edits</h1><div class='settings'>model "
            f"{html.escape(str(self.settings['model']))}<br>{html.escape(settings)}</div>\n"
        )
        (self.out / PAGE).write_text(head + body.read_text(encoding="utf-8") + "</body></html>\n", "utf-8")
        body.unlink()
        report.index, report.page = str(self.out / INDEX), str(self.out / PAGE)
        return report


SHOWN = ("key", "task", "shard", "source")  # what the page shows under an instruction


def edit_folder(
    pipe, folder: str, instruction: str, out_dir: str, settings: EditSettings, model: str | None = None
) -> BatchReport:
    """Edit every image of ``folder`` with one instruction; writes ``<out_dir>/<name>.png`` and the
    batch's index (:class:`EditIndex`; ``model`` names the model in it)."""
    report = BatchReport()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    index = EditIndex(out_dir, settings, model)
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
        index.add(out, np.asarray(image), instruction, key=path.stem, source=str(path))
        report.written.append(str(out))
    return index.close(report)


def edit_shards(
    pipe,
    shard_urls: Iterable[str],
    out_dir: str,
    settings: EditSettings,
    limit: int | None = None,
    model: str | None = None,
) -> BatchReport:
    """Edit each sample's source with its own instruction; writes ``<out_dir>/<key>.png`` and the
    batch's index (:class:`EditIndex`: each edit's key, task, instruction and source shard)."""
    report = BatchReport()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    index = EditIndex(out_dir, settings, model)
    samples = ((url, sample) for url in expand_shard_urls(shard_urls) for sample in iter_samples([url]))
    for url, sample in tqdm(_limited(samples, limit), desc="editing", unit="sample"):
        out = Path(out_dir) / f"{sample.key}.png"
        Image.fromarray(edit_image(pipe, sample.source, sample.meta.instruction, settings)).save(out)
        index.add(
            out, sample.source, sample.meta.instruction, key=sample.key, task=str(sample.meta.task), shard=url
        )
        report.written.append(str(out))
    return index.close(report)


def _limited(items: Iterator, limit: int | None) -> Iterator:
    for i, item in enumerate(items):
        if limit is not None and i >= limit:
            return
        yield item
