"""The latent cache: one pass encodes every source and target with the VAE, later epochs skip it.

Each input shard becomes one cache shard of the same samples with ``<key>.json`` and
``<key>.lat.safetensors`` (``src``, ``tgt`` and the latents of the horizontally flipped images
``src_flip``, ``tgt_flip``, float16, plus ``factor``, the VAE's downsampling). Images are resized to
the short side ``resolution`` and centre-cropped on the long side to at most ``max_aspect`` times
that, so the trainer still takes a random crop, in latent space. Latents are the distribution's
mean (a sample is drawn on the fly otherwise). A cache shard is written under a temporary name and
renamed when complete, so a killed pass resumes by skipping finished shards.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from collections import Counter
from collections.abc import Iterable

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from ieiw.model.data import LATENT_MEMBER, find_member, read_shard, resize_short_side, to_tensor
from ieiw.storage import fs
from ieiw.storage.images import decode_image
from ieiw.storage.schema import stable_key
from ieiw.storage.shards import expand_shard_urls


def cache_folder(root: str, base_model: str, resolution: int) -> str:
    """The cache of one (VAE, resolution): another base model or resolution gets its own folder."""
    return fs.join(root, f"r{resolution}-{stable_key(base_model, resolution)[:10]}")


def cache_url(folder: str, shard_url: str) -> str:
    """Where the cache of ``shard_url`` goes (the hash keeps same-named shards of two folders apart)."""
    return fs.join(folder, f"{stable_key(shard_url)[:8]}-{posixpath.basename(shard_url)}")


@torch.no_grad()
def encode_latents(vae, images: list[np.ndarray], device, dtype) -> list[torch.Tensor]:
    """The VAE latent means of same-sized ``uint8`` images, in one batch."""
    batch = torch.stack([to_tensor(i) for i in images]).to(device=device, dtype=dtype)
    return [t.contiguous() for t in vae.encode(batch).latent_dist.mode().to(torch.float16).cpu()]


def centre_crop(image: np.ndarray, resolution: int, factor: int, max_aspect: float) -> np.ndarray:
    h, w = image.shape[:2]
    th = min(h, int(resolution * max_aspect)) // factor * factor
    tw = min(w, int(resolution * max_aspect)) // factor * factor
    top, left = (h - th) // 2, (w - tw) // 2
    return image[top : top + th, left : left + tw]


def cache_shard(vae, url: str, out_url: str, resolution: int, device, dtype,
                max_aspect: float = 2.0) -> Counter:
    """Encode one shard's samples into ``out_url``; returns counts (``cached`` and drop reasons)."""
    counts: Counter = Counter()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    with fs.atomic_open(out_url) as handle, tarfile.open(fileobj=handle, mode="w|") as tar:
        for raw in read_shard(url, "instruction", counts):
            try:
                src = decode_image(find_member(raw, "src"))
                tgt = decode_image(find_member(raw, "tgt"))
            except (KeyError, ValueError, OSError) as exc:
                counts["undecodable" if not isinstance(exc, KeyError) else "missing-member"] += 1
                continue
            src = centre_crop(resize_short_side(src, resolution), resolution, factor, max_aspect)
            tgt = resize_short_side(tgt, resolution, like=(src.shape[1], src.shape[0]))
            pair = [src, tgt, src[:, ::-1], tgt[:, ::-1]]
            latents = encode_latents(vae, [np.ascontiguousarray(p) for p in pair], device, dtype)
            tensors = dict(zip(("src", "tgt", "src_flip", "tgt_flip"), latents, strict=True))
            tensors["factor"] = torch.tensor([factor])
            key = raw["__key__"]
            _add(tar, f"{key}.json", raw["json"])
            _add(tar, f"{key}.{LATENT_MEMBER}", save_safetensors(tensors))
            counts["cached"] += 1
    return counts


def build_latent_cache(
    vae, shard_urls: Iterable[str], folder: str, resolution: int, device, dtype, max_aspect: float = 2.0
) -> tuple[list[str], Counter]:
    """Cache every shard not cached yet; returns the cache shard URLs (in input order) and counts."""
    totals: Counter = Counter()
    outputs: list[str] = []
    fs.makedirs(folder)
    fs.remove_stale_temporaries(folder)
    for url in tqdm(expand_shard_urls(list(shard_urls)), desc="caching latents", unit="shard"):
        out = cache_url(folder, url)
        outputs.append(out)
        if fs.exists(out):
            totals["shards_reused"] += 1
            continue
        totals.update(cache_shard(vae, url, out, resolution, device, dtype, max_aspect))
    return outputs, totals


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = time.time()
    tar.addfile(info, io.BytesIO(data))
