"""Captions of source and target images: a BLIP-family model through transformers, batched.

Without a captioner the stage writes class-name captions instead (:func:`class_name_caption`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict

from ieiw.pipelines.instructions.templates import a_phrase
from ieiw.storage.config import model_ref, operational, precision
from ieiw.storage.models import pretrained


class CaptionConfig(BaseModel):
    """``class_names`` needs nothing; ``blip`` needs ``model`` (hub id or folder of a BLIP captioner)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["class_names", "blip"] = "class_names"
    model: str | None = model_ref(None)
    device: str = operational("auto")
    precision: Literal["auto", "fp32", "fp16"] = precision("auto")
    batch_size: int = operational(16)
    max_new_tokens: int = 30
    num_beams: int = 3
    prompt: str | None = None  # a conditional prefix such as "a photography of"


def class_name_caption(label: str | None) -> str:
    return f"a photo with {a_phrase(label or 'object')}"


class BlipCaptioner:
    """``BlipForConditionalGeneration`` + its processor, loaded with ``from_pretrained``."""

    backend = "blip"

    def __init__(self, config: CaptionConfig) -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        if not config.model:
            raise ValueError("caption.backend 'blip' needs caption.model: a hub id or a local folder")
        self.config = config
        self.batch_size = config.batch_size
        use_cuda = config.device == "auto" and torch.cuda.is_available()
        self.device = torch.device(
            "cuda" if use_cuda else ("cpu" if config.device == "auto" else config.device)
        )
        half = self.device.type == "cuda" and config.precision in ("auto", "fp16")
        self.dtype = torch.float16 if half else torch.float32
        name, options = pretrained(config.model)  # a hub id at its pinned commit, or a folder
        self.processor = BlipProcessor.from_pretrained(name, **options)
        self.model = BlipForConditionalGeneration.from_pretrained(name, torch_dtype=self.dtype, **options)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [Image.fromarray(a) for a in images[start : start + self.batch_size]]
            text = [self.config.prompt] * len(chunk) if self.config.prompt else None
            inputs = self.processor(images=chunk, text=text, return_tensors="pt").to(self.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            generated = self.model.generate(
                **inputs, max_new_tokens=self.config.max_new_tokens, num_beams=self.config.num_beams
            )
            decoded = self.processor.batch_decode(generated, skip_special_tokens=True)
            out.extend(" ".join(t.split()) for t in decoded)
        return out
