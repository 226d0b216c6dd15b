"""One training sample from its raw tar members: the text it trains on, its bucket, and its source
and target cropped and flipped identically (images, or cached latents written by
:mod:`ieiw.model.latent_cache`). :mod:`ieiw.model.data` streams raw samples (as the one shard reader,
:func:`ieiw.storage.shards.shard_samples`, gives them) and batches what this module decodes."""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load as load_safetensors

from ieiw.model.buckets import Shape, crop_pair, image_size
from ieiw.model.conditioning import SIZE_COND
from ieiw.storage.images import decode_image
from ieiw.storage.schema import SampleMeta
from ieiw.storage.shards import member as find_member  # the one rule for "the member <stem>.*"

if TYPE_CHECKING:
    from ieiw.model.data import StreamSettings

log = logging.getLogger(__name__)

LATENT_MEMBER = "lat.safetensors"


def keep_session_sample(meta: SampleMeta, sessions: str) -> bool:
    """Whether ``sessions`` (``all``, ``turns`` or ``whole``) keeps this sample: ``turns`` leaves out the
    whole-session samples (turn 0), ``whole`` the single turns of sessions; others are always kept."""
    if sessions == "turns":
        return meta.turn != 0
    if sessions == "whole":
        return meta.turn <= 0
    return True


def _latents(raw: dict) -> dict[str, torch.Tensor]:
    if "__latents__" not in raw:
        raw["__latents__"] = load_safetensors(raw[LATENT_MEMBER])
    return raw["__latents__"]


def bucket_of(raw: dict, s: StreamSettings, drops: Counter) -> Shape | None:
    """The bucket of one raw sample, read without decoding its images; None when it is not used."""
    try:
        meta = SampleMeta.model_validate_json(raw["json"])
        if not keep_session_sample(meta, s.sessions):
            return None
        if LATENT_MEMBER in raw:
            tensors = _latents(raw)
            if "bucket" not in tensors:
                drops["latents-without-bucket"] += 1
                return None
            return tuple(int(v) for v in tensors["bucket"].tolist())
        width, height = image_size(find_member(raw, "src"))
    except KeyError:
        drops["missing-member"] += 1
        return None
    except (ValueError, OSError, UnidentifiedImageError):
        drops["undecodable"] += 1
        return None
    assert s.buckets is not None
    return s.buckets.closest(width, height)


REWRITTEN = "rewritten_instruction"


def sample_text(meta: SampleMeta, text_field: str) -> str | None:
    """The text a sample trains on for ``text_field`` (see the module docstring)."""
    if text_field == REWRITTEN:
        alternatives = meta.instruction_alternatives
        judged = [a["text"] for a in alternatives if a.get("source", "").startswith("judge:")]
        return judged[-1] if judged and judged[-1] else meta.instruction
    return getattr(meta, text_field)


def decode_item(
    raw: dict, rng: random.Random, s: StreamSettings, drops: Counter, shape: Shape | None = None
) -> dict | None:
    """Decode one raw sample and apply the same random crop and flip to source and target (to
    ``shape``, a bucket, or a square of ``s.resolution``)."""
    try:
        meta = SampleMeta.model_validate_json(raw["json"])
        if not keep_session_sample(meta, s.sessions):
            return None
        text = sample_text(meta, raw["__text_field__"])
        if not text:
            drops["missing-text"] += 1
            return None
        if LATENT_MEMBER in raw:
            src, tgt, ids = crop_latents(_latents(raw), s, rng, shape)
            return {
                "src_lat": src,
                "tgt_lat": tgt,
                "text": text,
                "key": meta.key,
                "source": raw.get("__source__", ""),
                SIZE_COND: torch.tensor(ids),
            }
        src_img = decode_image(find_member(raw, "src"))
        tgt_img = decode_image(find_member(raw, "tgt"))
    except KeyError as exc:
        drops["missing-member"] += 1
        log.warning("sample %s lacks a member: %s", raw.get("__key__"), exc)
        return None
    except (ValueError, OSError, UnidentifiedImageError) as exc:
        drops["undecodable"] += 1
        log.warning("sample %s cannot be decoded: %s", raw.get("__key__"), exc)
        return None
    src, tgt, ids = crop_pair(src_img, tgt_img, shape or (s.resolution, s.resolution), s.random_flip, rng)
    return {
        "src": to_tensor(src),
        "tgt": to_tensor(tgt),
        "text": text,
        "key": meta.key,
        "source": raw.get("__source__", ""),
        SIZE_COND: torch.tensor(ids),
    }


def resize_short_side(image: np.ndarray, size: int, like: tuple[int, int] | None = None) -> np.ndarray:
    """Resize so the short side is ``size`` (or to ``like`` = (width, height) when given)."""
    h, w = image.shape[:2]
    if like is None:
        scale = size / min(h, w)
        like = (max(size, round(w * scale)), max(size, round(h * scale)))
    if (w, h) == like:
        return image
    return np.asarray(Image.fromarray(image).resize(like, Image.Resampling.BICUBIC))


def crop_and_flip(
    src: np.ndarray, tgt: np.ndarray, resolution: int, flip: bool, rng: random.Random
) -> tuple[np.ndarray, np.ndarray]:
    """Resize both to the source's short side ``resolution``, then one random crop and flip for both."""
    src, tgt, _ = crop_pair(src, tgt, (resolution, resolution), flip, rng)
    return src, tgt


def crop_latents(
    tensors: dict[str, torch.Tensor], s: StreamSettings, rng: random.Random, shape: Shape | None = None
):
    """The cached-latent counterpart of :func:`crop_and_flip` (flips use the cached flipped latents), to
    ``shape`` (a bucket) or a square of ``s.resolution``; also returns the crop's SDXL size ids."""
    flipped = s.random_flip and rng.random() < 0.5
    src = tensors["src_flip" if flipped else "src"].float()
    tgt = tensors["tgt_flip" if flipped else "tgt"].float()
    factor = int(tensors["factor"].item())
    height, width = shape or (s.resolution, s.resolution)
    size_h, size_w = height // factor, width // factor
    h, w = src.shape[-2:]
    if h < size_h or w < size_w:
        raise ValueError(f"cached latents {h}x{w} are smaller than the crop {size_h}x{size_w}")
    top, left = rng.randint(0, h - size_h), rng.randint(0, w - size_w)
    if "origin" in tensors:  # (original h, w; resized h, w; the cached crop's top, left in the resized)
        oh, ow, _, rw, ctop, cleft = (int(v) for v in tensors["origin"].tolist())
        cleft = rw - cleft - w * factor if flipped else cleft
        ids = [oh, ow, ctop + top * factor, cleft + left * factor, height, width]
    else:
        ids = [h * factor, w * factor, top * factor, left * factor, height, width]
    crop = (slice(None), slice(top, top + size_h), slice(left, left + size_w))
    return src[crop], tgt[crop], ids


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 ``uint8`` to a 3xHxW float tensor in [-1, 1], as the VAE expects."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)
