"""One training sample from its raw tar members: the text it trains on, its bucket, and its source
and target cropped and flipped identically (images, or cached latents written by
:mod:`ieiw.model.latent_cache`). :mod:`ieiw.model.data` streams raw samples (as the one shard reader,
:func:`ieiw.storage.shards.shard_samples`, gives them, or a Diffusion-DPO Parquet file,
:mod:`ieiw.model.dpo_layout`) and batches what this module decodes.

For preference training (``StreamSettings.rejected``) a sample is a preference pair: the target is the
chosen edit and the rejected edit (``rejected.*``, or the cached ``rej`` latents) takes the same crop and
flip; a sample without one is a counted drop. A set's ``choosers`` (``raw["__choosers__"]``) keeps only the
pairs whose ``chooser`` is one of them."""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load as load_safetensors

from ieiw.model.buckets import Shape, crop_alike, image_size
from ieiw.model.conditioning import SIZE_COND
from ieiw.model.dpo_layout import REJECTED
from ieiw.storage.images import decode_image
from ieiw.storage.schema import SampleMeta, Task
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


def keep_sample(meta: SampleMeta, raw: dict, s: StreamSettings) -> bool:
    """Whether the stream uses this sample at all: its session turn (:func:`keep_session_sample`) and, for
    a set that names ``choosers``, who chose the pair. Samples left out this way are not drops."""
    if not keep_session_sample(meta, s.sessions):
        return False
    choosers = raw.get("__choosers__")
    return not choosers or str(meta.extra.get("chooser", "")) in choosers


def _latents(raw: dict) -> dict[str, torch.Tensor]:
    if "__latents__" not in raw:
        raw["__latents__"] = load_safetensors(raw[LATENT_MEMBER])
    return raw["__latents__"]


def bucket_of(raw: dict, s: StreamSettings, drops: Counter) -> Shape | None:
    """The bucket of one raw sample, read without decoding its images; None when it is not used."""
    try:
        meta = SampleMeta.model_validate_json(raw["json"])
        if not keep_sample(meta, raw, s):
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
    """Decode one raw sample and apply the same random crop and flip to source and target (and, for
    preference training, the rejected edit) (to ``shape``, a bucket, or a square of ``s.resolution``)."""
    try:
        meta = SampleMeta.model_validate_json(raw["json"])
        if not keep_sample(meta, raw, s):
            return None
        text = sample_text(meta, raw["__text_field__"])
        if not text:
            drops["missing-text"] += 1
            return None
        item = {"text": text, "key": meta.key, "source": raw.get("__source__", "")}
        if s.rejected and meta.task != Task.PREFERENCE:
            drops["not-a-preference-pair"] += 1
            return None
        if LATENT_MEMBER in raw:
            tensors = _latents(raw)
            if s.rejected and "rej" not in tensors:
                drops["latents-without-rejected"] += 1
                return None
            src, targets, ids = crop_latents(tensors, s, rng, shape)
            item.update(src_lat=src, tgt_lat=targets[0], **{SIZE_COND: torch.tensor(ids)})
            if s.rejected:
                item["rej_lat"] = targets[1]
            return item
        src_img = decode_image(find_member(raw, "src"))
        others = [decode_image(find_member(raw, "tgt"))]
        if s.rejected:
            others.append(decode_image(find_member(raw, REJECTED)))
    except KeyError as exc:
        drops["missing-member"] += 1
        log.warning("sample %s lacks a member: %s", raw.get("__key__"), exc)
        return None
    except (ValueError, OSError, UnidentifiedImageError) as exc:
        drops["undecodable"] += 1
        log.warning("sample %s cannot be decoded: %s", raw.get("__key__"), exc)
        return None
    images, ids = crop_alike(src_img, others, shape or (s.resolution, s.resolution), s.random_flip, rng)
    item.update(src=to_tensor(images[0]), tgt=to_tensor(images[1]), **{SIZE_COND: torch.tensor(ids)})
    if s.rejected:
        item["rej"] = to_tensor(images[2])
    return item


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
    (src, tgt), _ = crop_alike(src, [tgt], (resolution, resolution), flip, rng)
    return src, tgt


def crop_latents(
    tensors: dict[str, torch.Tensor], s: StreamSettings, rng: random.Random, shape: Shape | None = None
) -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
    """The cached-latent counterpart of :func:`crop_and_flip` (flips use the cached flipped latents), to
    ``shape`` (a bucket) or a square of ``s.resolution``: the source, the targets (the target; with
    ``s.rejected`` also the rejected edit) and the crop's SDXL size ids."""
    flipped = s.random_flip and rng.random() < 0.5
    suffix = "_flip" if flipped else ""
    src = tensors["src" + suffix].float()
    targets = [tensors[name + suffix].float() for name in ("tgt", "rej")[: 2 if s.rejected else 1]]
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
    return src[crop], [t[crop] for t in targets], ids


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 ``uint8`` to a 3xHxW float tensor in [-1, 1], as the VAE expects."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1.0)
