"""The latent cache: one pass encodes every source and target with the VAE, later epochs skip it.

Each input shard becomes one cache shard of the same samples with ``<key>.json`` and
``<key>.lat.safetensors`` (``src``, ``tgt`` and the latents of the horizontally flipped images
``src_flip``, ``tgt_flip``, float16, plus ``factor``, the VAE's downsampling, and ``origin``: the
original size, the resized size and where the cached crop lies in it, for SDXL's size ids). Images are
resized to the short side ``resolution`` and centre-cropped on the long side to at most ``max_aspect``
times that, so the trainer still takes a random crop, in latent space. With aspect-ratio buckets
(:mod:`ieiw.model.buckets`) each sample is instead resized to cover its bucket (stored as ``bucket``)
and the trainer crops the bucket's shape out of it. Latents are the distribution's mean (a sample is
drawn on the fly otherwise).

The cache is a stage folder (:mod:`ieiw.storage.stage_folder`) under the configured root, one per
*encoder* fingerprint (:func:`cache_fingerprint`: the VAE by content, the dtype it encodes in, the
resolution, ``max_aspect``, the crop and the bucket shapes), named ``r<resolution>-<digest>`` (``b`` for
buckets instead of ``r``), so another VAE, resolution or set of buckets gets another cache. Each input
shard is one batch whose name is the digest of the encoder
fingerprint plus the input shard's identity (:func:`ieiw.model.inputs.shard_identity`: a stage's
digest and the shard's name, or a foreign shard's name, size and modification time), so a changed
input shard is encoded again and a cache batch is reused only when everything that made its latents
is the same. A batch's cache shard is written first, its manifest part (one row: input, identity,
samples, drops, the rank that wrote it) last; only committed batches exist for a reader.

Many processes (``accelerate``): rank 0 takes the stage's lease, cleans what killed runs left and
plans the pending batches; every rank then encodes a disjoint share of them and commits through the
lease of rank 0; rank 0 finishes the stage once all ranks are done. No rank but the lease holder
deletes anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import torch
from tqdm.auto import tqdm

from ieiw.model.buckets import Buckets
from ieiw.model.inputs import shard_identities
from ieiw.model.latent_encoding import cache_shard
from ieiw.model.ranks import Ranks, current_ranks
from ieiw.storage import fs, manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import model_identity
from ieiw.storage.schema import stable_key
from ieiw.storage.shards import expand_shard_urls
from ieiw.storage.stage_folder import commit_files, open_stage

STAGE = "latent_cache"
CROP = "centre"  # how the long side is cut to max_aspect; part of the fingerprint
CACHE_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("shard", pa.string()),  # the cache shard's name (null when no sample of the input was cached)
        ("input", pa.string()),  # the input shard's name
        ("input_identity", pa.string()),
        ("batch_fingerprint", pa.string()),
        ("samples", pa.int64()),
        ("drops", pa.string()),  # JSON counts by reason
        ("rank", pa.int32()),  # the process that encoded it
        ("host", pa.string()),
        ("fingerprint", pa.string()),
    ]
)


# ----------------------------------------------------------------------------- identity


def vae_identity(model: str) -> str | None:
    """The VAE's identity by content: the ``vae/`` folder of a local diffusers checkpoint (so a trained
    pipeline that kept the base VAE has the base's identity), the folder itself, or a hub id at its
    resolved revision."""
    value = os.fspath(model)
    vae = os.path.join(value, "vae")
    return model_identity(vae if os.path.isdir(vae) else value)


def cache_fingerprint(
    vae_model: str,
    resolution: int,
    max_aspect: float = 2.0,
    dtype: torch.dtype | str = torch.float32,
    buckets: Buckets | None = None,
) -> Fingerprint:
    """Everything that determines the latents of a given input shard (the shard itself goes into each
    batch's name); with ``buckets``, their shapes."""
    settings: dict = {
        "resolution": int(resolution),
        "max_aspect": float(max_aspect),
        "crop": CROP,
        "flips": True,
        "latent": "mode",
        "stored_as": "float16",
        "encode_dtype": str(dtype).removeprefix("torch."),
        "origin": True,  # each sample's size ids are stored with its latents
    }
    if buckets is not None:
        settings["buckets"] = buckets.to_json()
        settings["bucket_step"] = buckets.step
    return Fingerprint(stage=STAGE, settings=settings, models={"vae": vae_identity(vae_model)})


def cache_folder(root: str, fingerprint: Fingerprint) -> str:
    """The cache of one encoder fingerprint: another VAE, resolution or crop gets its own folder."""
    kind = "b" if "buckets" in fingerprint.settings else "r"
    return fs.join(root, f"{kind}{fingerprint.settings['resolution']}-{fingerprint.digest[:12]}")


def buckets_of(fingerprint: Fingerprint) -> Buckets | None:
    """The buckets a cache fingerprint was made for (None: square crops)."""
    shapes = fingerprint.settings.get("buckets")
    if not shapes:
        return None
    return Buckets(tuple(tuple(int(v) for v in s) for s in shapes), int(fingerprint.settings["bucket_step"]))


def batch_for(fingerprint: Fingerprint, identity: str) -> tuple[str, str]:
    """(batch name, batch fingerprint) of one input shard under ``fingerprint``."""
    digest = stable_key("latent-batch", fingerprint.digest, identity)
    return f"lat-{digest[:20]}", digest


class CacheFailed(RuntimeError):
    """A rank could not open or fill the cache; every rank raises it."""


# ----------------------------------------------------------------------------- the pass


@dataclass(frozen=True)
class Planned:
    """One input shard's batch in the cache."""

    url: str
    batch: str
    batch_fingerprint: str
    identity: str


@dataclass
class CacheResult:
    """The cache shard of each input shard (None: none of its samples could be cached), and counts."""

    folder: str
    shards: dict[str, str | None]
    counts: Counter

    def urls(self, inputs: Iterable[str]) -> list[str]:
        """The cache shards of ``inputs`` (expanded as a reader does), in their order."""
        return [s for u in expand_shard_urls(list(inputs)) if (s := self.shards.get(u))]


def _plan(fingerprint: Fingerprint, inputs: Sequence[str]) -> list[Planned]:
    identities = shard_identities(inputs)
    return [Planned(u, *batch_for(fingerprint, identities[u]), identities[u]) for u in inputs]


def _encode_batches(
    vae,
    writer_info: dict,
    mine: list[Planned],
    resolution: int,
    device,
    dtype,
    max_aspect: float,
    rank: int,
    show: bool,
    buckets: Buckets | None = None,
) -> Counter:
    url, digest, holder = writer_info["url"], writer_info["digest"], writer_info["holder"]
    totals: Counter = Counter()
    for item in tqdm(mine, desc="caching latents", unit="shard", disable=not show):
        name = f"{item.batch}.tar"
        out = fs.join(url, manifest.SHARD_DIR, name)
        counts = cache_shard(vae, item.url, out, resolution, device, dtype, max_aspect, buckets)
        cached = counts.pop("cached", 0)
        if not cached:
            name = None  # no sample of the input could be cached: no cache shard
        row = {
            "batch": item.batch,
            "shard": name,
            "input": posixpath.basename(item.url),
            "input_identity": item.identity,
            "batch_fingerprint": item.batch_fingerprint,
            "samples": cached,
            "drops": json.dumps(dict(sorted(counts.items()))),
            "rank": rank,
            "host": socket.gethostname(),
            "fingerprint": digest,
        }
        commit_files(
            url, item.batch, pa.Table.from_pylist([row], schema=CACHE_SCHEMA), None, digest, holder, STAGE
        )
        totals["cached"] += cached
        totals["shards_cached"] += 1
        totals.update(counts)
    return totals


def build_latent_cache(
    vae,
    shard_urls: Iterable[str],
    root: str,
    fingerprint: Fingerprint,
    device,
    dtype,
    ranks: Ranks | None = None,
    lease_wait: float = 600.0,
    info: dict | None = None,
) -> CacheResult:
    """Cache every input shard not cached yet under ``root`` (a stage folder per ``fingerprint``).

    Call it on every rank of a run with the same arguments (``ranks``: the run's processes, by default
    the ``torch.distributed`` group): rank 0 holds the stage's lease and cleans, the ranks encode
    disjoint shares of the pending shards, and every rank gets the same :class:`CacheResult`.
    """
    ranks = ranks or current_ranks()
    folder = cache_folder(root, fingerprint)
    settings = fingerprint.settings
    resolution, max_aspect = int(settings["resolution"]), float(settings["max_aspect"])
    with contextlib.ExitStack() as held:
        payload: dict[str, Any] = {}
        writer = None
        if ranks.rank == 0:
            try:
                inputs = list(dict.fromkeys(expand_shard_urls(list(shard_urls))))
                writer = held.enter_context(
                    open_stage(
                        folder,
                        fingerprint,
                        rebuild="changed",
                        lease_wait=lease_wait,
                        info={**(info or {}), "ranks": ranks.world},
                    )
                )
                plan = _plan(fingerprint, inputs)
                done = writer.committed_batches()
                payload = {
                    "url": folder,
                    "digest": writer.digest,
                    "holder": writer.holder,
                    "plan": plan,
                    "pending": [p for p in plan if p.batch not in done],
                    "cleaned": writer.cleaned,
                }
            except BaseException as error:  # tell the other ranks instead of leaving them waiting
                ranks.broadcast({"error": f"{type(error).__name__}: {error}"})
                raise
        payload = ranks.broadcast(payload)
        if "error" in payload:
            raise CacheFailed(f"rank 0 could not open the latent cache: {payload['error']}")
        mine = payload["pending"][ranks.rank :: ranks.world]
        try:
            counts: Counter | str = _encode_batches(
                vae,
                payload,
                mine,
                resolution,
                device,
                dtype,
                max_aspect,
                ranks.rank,
                show=ranks.rank == 0,
                buckets=buckets_of(fingerprint),
            )
        except Exception:  # noqa: BLE001 - reported to every rank below
            counts = traceback.format_exc(limit=8)
        everyone = ranks.gather(counts)  # when this returns, every rank has committed (or failed)
        failed = [f"rank {r}: {c}" for r, c in enumerate(everyone) if isinstance(c, str)]
        if failed:
            raise CacheFailed("caching latents failed:\n" + "\n".join(failed))
        totals: Counter = sum((Counter(c) for c in everyone), Counter())
        totals["shards_reused"] = len(payload["plan"]) - len(payload["pending"])
        finished: str | None = None
        if writer is not None:
            try:
                writer.finish(
                    {
                        "shards_cached": totals["shards_cached"],
                        "samples_cached": totals["cached"],
                        "shards_reused": totals["shards_reused"],
                        "cleaned": payload["cleaned"],
                        "ranks": ranks.world,
                    },
                    schema=CACHE_SCHEMA,
                )
            except Exception:  # noqa: BLE001 - reported to every rank below
                finished = traceback.format_exc(limit=8)
    if (finished := ranks.gather(finished)[0]) is not None:  # the lease is free when this returns
        raise CacheFailed(f"rank 0 could not finish the latent cache:\n{finished}")
    table = manifest.read_table(folder, columns=["batch", "shard"], schema=CACHE_SCHEMA).to_pylist()
    by_batch = {row["batch"]: row["shard"] for row in table}
    shards: dict[str, str | None] = {}
    for item in payload["plan"]:
        if item.batch not in by_batch:
            raise CacheFailed(f"{item.url}: its cache batch {item.batch} was not committed")
        name = by_batch[item.batch]
        shards[item.url] = fs.join(folder, manifest.SHARD_DIR, name) if name else None
    return CacheResult(folder, shards, +totals)
