"""One input shard's pairs encoded into a latent cache shard: resized and cropped alike (square, or to
cover their bucket), the VAE latent means of the images and of their mirror images, with where the crop
came from. :mod:`ieiw.model.latent_cache` runs this over a cache's pending batches."""

from __future__ import annotations

import io
import tarfile
from collections import Counter

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from ieiw.model.buckets import Buckets, cover_size, resize
from ieiw.model.data import read_shard
from ieiw.model.sample_decode import LATENT_MEMBER, find_member, resize_short_side, to_tensor
from ieiw.storage import fs
from ieiw.storage.images import decode_image


@torch.no_grad()
def encode_latents(vae, images: list[np.ndarray], device, dtype) -> list[torch.Tensor]:
    """The VAE latent means of same-sized ``uint8`` images, in one batch."""
    batch = torch.stack([to_tensor(i) for i in images]).to(device=device, dtype=dtype)
    return [t.contiguous() for t in vae.encode(batch).latent_dist.mode().to(torch.float16).cpu()]


def centre_box(h: int, w: int, limit_h: int, limit_w: int, factor: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the centred crop of at most ``limit_h`` x ``limit_w``, sides
    multiples of ``factor``."""
    th, tw = min(h, limit_h) // factor * factor, min(w, limit_w) // factor * factor
    return (h - th) // 2, (w - tw) // 2, th, tw


def cache_crop(
    src: np.ndarray, tgt: np.ndarray, resolution: int, factor: int, max_aspect: float, buckets: Buckets | None
) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
    """What is cached of one pair (source and target resized and cropped alike), and the tensors that say
    where it came from (``origin``; with buckets, ``bucket``)."""
    h, w = src.shape[:2]
    extra: dict[str, torch.Tensor] = {}
    if buckets is None:
        src = resize_short_side(src, resolution)
        limit = int(resolution * max_aspect)
        top, left, th, tw = centre_box(*src.shape[:2], limit, limit, factor)
    else:
        shape = buckets.closest(w, h)
        src = resize(src, cover_size(w, h, shape))
        top, left, th, tw = centre_box(*src.shape[:2], src.shape[0], src.shape[1], factor)
        extra["bucket"] = torch.tensor(shape)
    rh, rw = src.shape[:2]
    tgt = resize(tgt, (rw, rh))
    extra["origin"] = torch.tensor([h, w, rh, rw, top, left])
    box = (slice(top, top + th), slice(left, left + tw))
    return src[box], tgt[box], extra


def cache_shard(
    vae,
    url: str,
    out_url: str,
    resolution: int,
    device,
    dtype,
    max_aspect: float = 2.0,
    buckets: Buckets | None = None,
) -> Counter:
    """Encode one shard's samples into ``out_url``; returns counts (``cached`` and drop reasons).

    Nothing is written when no sample could be cached (``cached`` is 0).
    """
    counts: Counter = Counter()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    try:
        with fs.atomic_open(out_url) as handle:
            with tarfile.open(fileobj=handle, mode="w|") as tar:
                for raw in read_shard(url, "instruction", counts):
                    try:
                        src, tgt = decode(raw, "src"), decode(raw, "tgt")
                    except KeyError:
                        counts["missing-member"] += 1
                        continue
                    except (ValueError, OSError):
                        counts["undecodable"] += 1
                        continue
                    src, tgt, extra = cache_crop(src, tgt, resolution, factor, max_aspect, buckets)
                    pair = [src, tgt, src[:, ::-1], tgt[:, ::-1]]
                    latents = encode_latents(vae, [np.ascontiguousarray(p) for p in pair], device, dtype)
                    tensors = dict(zip(("src", "tgt", "src_flip", "tgt_flip"), latents, strict=True))
                    tensors["factor"] = torch.tensor([factor])
                    tensors.update(extra)
                    key = raw["__key__"]
                    _add(tar, f"{key}.json", raw["json"])
                    _add(tar, f"{key}.{LATENT_MEMBER}", save_safetensors(tensors))
                    counts["cached"] += 1
            if not counts["cached"]:
                raise _Empty  # discards the temporary file
    except _Empty:
        pass
    return counts


class _Empty(Exception):
    pass


def decode(raw: dict, stem: str) -> np.ndarray:
    return decode_image(find_member(raw, stem))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same latents make the same bytes, whenever and wherever they were cached
    tar.addfile(info, io.BytesIO(data))
