"""Which family a diffusers checkpoint belongs to (Stable Diffusion 1.x/2.x or SDXL), and its edit pipeline.

A checkpoint says so in its ``model_index.json``: an SDXL one has a second text encoder
(``text_encoder_2``: ``CLIPTextModelWithProjection``). The trainer builds the matching models from a base,
and ``ieiw edit`` / ``ieiw evaluate`` / ``ieiw candidates`` open a trained folder in the matching
InstructPix2Pix pipeline, so nothing else needs to be told which one it is.
"""

from __future__ import annotations

import json
import os
from typing import Literal

Family = Literal["sd", "sdxl"]
SD: Family = "sd"
SDXL: Family = "sdxl"


def model_index(model: str) -> dict:
    """The ``model_index.json`` of a local diffusers folder or a hub id (only that file is fetched; a
    pinned ``owner/name@commit`` at that commit)."""
    local = os.path.join(os.path.expanduser(os.fspath(model)), "model_index.json")
    if os.path.isfile(local):
        with open(local, encoding="utf-8") as handle:
            return json.load(handle)
    if os.path.isdir(os.path.expanduser(os.fspath(model))):
        raise FileNotFoundError(f"{model} is not a diffusers checkpoint: it has no model_index.json")
    from diffusers import DiffusionPipeline

    from ieiw.storage.models import pretrained

    name, pinned = pretrained(os.fspath(model))
    return dict(DiffusionPipeline.load_config(name, **pinned))


def family_of_index(index: dict) -> Family:
    second = index.get("text_encoder_2")
    if isinstance(second, (list, tuple)) and any(second):
        return SDXL
    return SDXL if "XL" in str(index.get("_class_name", "")) else SD


def model_family(model: str) -> Family:
    """``sdxl`` for a checkpoint with two text encoders, else ``sd``."""
    return family_of_index(model_index(model))


def edit_pipeline_class(family: Family):
    """The diffusers InstructPix2Pix pipeline class of ``family``."""
    if family == SDXL:
        from diffusers import StableDiffusionXLInstructPix2PixPipeline

        return StableDiffusionXLInstructPix2PixPipeline
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return StableDiffusionInstructPix2PixPipeline


def is_sdxl_pipeline(pipe) -> bool:
    """Whether a loaded pipeline is an SDXL one (it has a second text encoder)."""
    return getattr(pipe, "text_encoder_2", None) is not None or getattr(pipe, "tokenizer_2", None) is not None


def size_kwargs(pipe, width: int, height: int) -> dict:
    """What a pipeline call needs to work at the input's own size: the SDXL pipeline otherwise resizes the
    image to its default 1024 px (the SD one takes the image's size)."""
    if is_sdxl_pipeline(pipe):
        return {"height": int(height), "width": int(width)}
    return {}
