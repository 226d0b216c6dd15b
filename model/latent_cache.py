"""The latent cache: one pass encodes every source and target with the VAE, later epochs skip it.

Each input shard becomes one cache shard of the same samples with ``<key>.json`` and
``<key>.lat.safetensors`` (``src``, ``tgt`` and the latents of the horizontally flipped images
``src_flip``, ``tgt_flip``, float16; a cache for preference training, :func:`cache_fingerprint` with
``rejected``, also holds each pair's rejected edit, ``rej`` and ``rej_flip``, and leaves out samples that
are not preference pairs; plus ``factor``, the VAE's downsampling, and ``origin``: the
original size, the resized size and where the cached crop lies in it, for SDXL's size ids). Images are
resized to the short side ``resolution`` and centre-cropped on the long side to at most ``max_aspect``
times that, so the trainer still takes a random crop, in latent space. With aspect-ratio buckets
(:mod:`ieiw.model.buckets`) each sample is instead resized to cover its bucket (stored as ``bucket``)
and the trainer crops the bucket's shape out of it. Latents are the distribution's mean (a sample is
drawn on the fly otherwise).

The cache is a ``rows`` stage (:class:`LatentCacheStage`, run by :func:`ieiw.storage.runner.run_stage`)
under the configured root, one stage folder per *encoder* fingerprint (:func:`cache_fingerprint`: the
VAE by content, the dtype it encodes in, the resolution, ``max_aspect``, the crop and the bucket
shapes), named ``r<resolution>-<digest>`` (``b`` for buckets instead of ``r``), so another VAE,
resolution or set of buckets gets another cache. Its unit of work is one input shard: a batch of one
record whose id is the shard's identity (:func:`ieiw.model.inputs.shard_identity`: a stage's digest and
the shard's name, or a foreign shard's name, size and modification time), so a changed input shard is
encoded again and a committed one never is. A batch's cache shard is its file, its manifest part one
row (input, identity, samples, drops, the rank that wrote it); only committed batches exist for a
reader.

Many processes (``accelerate``): :class:`RanksExecutor` is the runner's executor over the processes of a
training run. Rank 0 runs the stage (it takes the stage's lease, cleans what killed runs left and
plans the pending batches); the other ranks serve: every rank encodes a disjoint share of the batches
and commits it through rank 0's lease, and a failure on any rank raises :class:`CacheFailed` on every
rank. No rank but the lease holder deletes anything.

The VAE is the trainer's own, already loaded: :func:`build_latent_cache` hands it to the stage's
:meth:`~LatentCacheStage.models` for the length of the run (the stage itself holds only its name).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import socket
import tarfile
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
from safetensors.torch import save as save_safetensors
from tqdm.auto import tqdm

from ieiw.model.buckets import Buckets, cover_size, resize
from ieiw.model.data import expand_urls, read_shard
from ieiw.model.dpo_layout import REJECTED
from ieiw.model.inputs import shard_identities
from ieiw.model.sample_decode import LATENT_MEMBER, find_member, resize_short_side, to_tensor
from ieiw.storage import fs, manifest
from ieiw.storage.commit import batch_name
from ieiw.storage.config import WorkerEnv
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import model_identity
from ieiw.storage.images import decode_image
from ieiw.storage.runner import RunOptions, StageSummary, WorkerMismatch, forget_models, run_stage
from ieiw.storage.stage import HOST, ModelSpec, Rows, Stage

STAGE = "latent_cache"
FORMAT = "ieiw-latents/2"  # one batch per input shard identity, run by the one runner
CROP = "centre"  # how the long side is cut to max_aspect; part of the fingerprint
CACHE_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("shard", pa.string()),  # the cache shard's name (null when no sample of the input was cached)
        ("input", pa.string()),  # the input shard's name
        ("input_identity", pa.string()),
        ("samples", pa.int64()),
        ("drops", pa.string()),  # JSON counts by reason
        ("rank", pa.int32()),  # the process that encoded it
        ("host", pa.string()),
        ("fingerprint", pa.string()),
    ]
)


# ------------------------------------------------------------------------------------------ identity


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
    rejected: bool = False,
) -> Fingerprint:
    """Everything that determines the latents of a given input shard (the shard itself is each batch's
    record); with ``buckets``, their shapes; with ``rejected``, preference pairs' rejected edits too (a
    cache of its own: an edit run's cache stays as it is)."""
    settings: dict = {
        "format": FORMAT,
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
    if rejected:
        settings["rejected"] = True
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


class CacheFailed(RuntimeError):
    """A rank could not open or fill the cache; every rank raises it."""


# ------------------------------------------------------------------------------------ one input shard


@torch.no_grad()
def encode_latents(vae, images: list[np.ndarray]) -> list[torch.Tensor]:
    """The VAE latent means of same-sized ``uint8`` images, in one batch (on the VAE's device and dtype)."""
    batch = torch.stack([to_tensor(i) for i in images]).to(device=vae.device, dtype=vae.dtype)
    return [t.contiguous() for t in vae.encode(batch).latent_dist.mode().to(torch.float16).cpu()]


def centre_box(h: int, w: int, limit_h: int, limit_w: int, factor: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the centred crop of at most ``limit_h`` x ``limit_w``, sides
    multiples of ``factor``."""
    th, tw = min(h, limit_h) // factor * factor, min(w, limit_w) // factor * factor
    return (h - th) // 2, (w - tw) // 2, th, tw


def cache_crop(
    src: np.ndarray,
    targets: np.ndarray | list[np.ndarray],
    resolution: int,
    factor: int,
    max_aspect: float,
    buckets: Buckets | None,
) -> tuple[np.ndarray, list[np.ndarray], dict[str, torch.Tensor]]:
    """What is cached of one pair (source and its targets, the target and a preference pair's rejected
    edit, resized and cropped alike), and the tensors that say where it came from (``origin``; with
    buckets, ``bucket``)."""
    targets = [targets] if isinstance(targets, np.ndarray) else list(targets)
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
    targets = [resize(t, (rw, rh)) for t in targets]
    extra["origin"] = torch.tensor([h, w, rh, rw, top, left])
    box = (slice(top, top + th), slice(left, left + tw))
    return src[box], [t[box] for t in targets], extra


def cache_shard(
    vae,
    url: str,
    resolution: int,
    max_aspect: float = 2.0,
    buckets: Buckets | None = None,
    rejected: bool = False,
) -> tuple[bytes | None, Counter]:
    """One input shard's pairs encoded as a cache shard: ``(its bytes, counts)`` (``cached`` and drop
    reasons); no bytes when no sample could be cached. With ``rejected``, only preference pairs, each with
    its rejected edit."""
    counts: Counter = Counter()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    names = ("src", "tgt", REJECTED) if rejected else ("src", "tgt")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w|") as tar:
        for raw in read_shard(url, "instruction", counts):
            if rejected and not any(n.split(".", 1)[0] == REJECTED for n in raw if not n.startswith("__")):
                counts["not-a-preference-pair"] += 1
                continue
            try:
                images = [decode(raw, name) for name in names]
            except KeyError:
                counts["missing-member"] += 1
                continue
            except (ValueError, OSError):
                counts["undecodable"] += 1
                continue
            src, targets, extra = cache_crop(images[0], images[1:], resolution, factor, max_aspect, buckets)
            plain = [src, *targets]
            views = plain + [image[:, ::-1] for image in plain]
            latents = encode_latents(vae, [np.ascontiguousarray(v) for v in views])
            stems = ("src", "tgt", "rej")[: len(plain)]
            tensors = dict(zip([*stems, *(f"{n}_flip" for n in stems)], latents, strict=True))
            tensors["factor"] = torch.tensor([factor])
            tensors.update(extra)
            key = raw["__key__"]
            _add(tar, f"{key}.json", raw["json"])
            _add(tar, f"{key}.{LATENT_MEMBER}", save_safetensors(tensors))
            counts["cached"] += 1
    return (buffer.getvalue() if counts["cached"] else None), counts


def decode(raw: dict, stem: str) -> np.ndarray:
    return decode_image(find_member(raw, stem))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same latents make the same bytes, whenever and wherever they were cached
    tar.addfile(info, io.BytesIO(data))


# ------------------------------------------------------------------------------------------- the stage

_GIVEN: dict[str, Any] = {}  # models handed in by the process that runs a stage, by token


def given_model(token: str) -> Any:
    """A model this process handed in for a run (:func:`handing_in`): a stage's ``ModelSpec.load``."""
    try:
        return _GIVEN[token]
    except KeyError:
        raise RuntimeError(
            f"model {token} is handed in by the process that runs the stage (the trainer's VAE); "
            "run the latent cache in the training processes"
        ) from None


@contextlib.contextmanager
def handing_in(token: str, model: Any) -> Iterator[None]:
    """``model`` is what :func:`given_model` of ``token`` returns in this process while the block runs;
    afterwards no cache of this process holds it."""
    _GIVEN[token] = model
    try:
        yield
    finally:
        _GIVEN.pop(token, None)
        forget_models(f"given:{token}")


@dataclass(frozen=True)
class CacheInput:
    """One input shard: where it lies, and its identity (the record id)."""

    url: str
    record_id: str


def current_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class LatentCacheStage(Stage):
    """The VAE latents of input shards, one cache shard per input shard (see the module docstring)."""

    name = STAGE
    writes = "rows"
    schema = CACHE_SCHEMA

    def __init__(
        self, inputs: list[str], root: str, fingerprint: Fingerprint, world: int = 1, info: dict | None = None
    ) -> None:
        super().__init__(cache_folder(root, fingerprint), batch_size=1)
        self.inputs = list(dict.fromkeys(inputs))
        self.cache_fingerprint = fingerprint
        self.world = world
        self.vae_token = fingerprint.digest
        self._info = dict(info or {})

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        return self.cache_fingerprint

    def records(self) -> Iterator[CacheInput]:
        identities = shard_identities(self.inputs)
        for url in self.inputs:
            yield CacheInput(url, identities[url])

    def total(self) -> int:
        return len(self.inputs)

    def models(self) -> Mapping[str, ModelSpec]:
        return {"vae": ModelSpec(f"given:{self.vae_token}", partial(given_model, self.vae_token), HOST)}

    def run(self, records: list[CacheInput], models: Mapping[str, Any]) -> Rows:
        vae = models["vae"]
        settings = self.cache_fingerprint.settings
        buckets = buckets_of(self.cache_fingerprint)
        rows, files, totals = [], {}, Counter()
        for item in records:
            batch = batch_name(self.batch_prefix, [item.record_id])  # the runner's name for this batch
            data, counts = cache_shard(
                vae,
                item.url,
                int(settings["resolution"]),
                float(settings["max_aspect"]),
                buckets,
                bool(settings.get("rejected", False)),
            )
            cached = counts.pop("cached", 0)
            name = f"{batch}.tar" if data else None
            if data:
                files[fs.join(manifest.SHARD_DIR, name)] = data
            rows.append(
                {
                    "batch": batch,
                    "shard": name,
                    "input": posixpath.basename(item.url),
                    "input_identity": item.record_id,
                    "samples": cached,
                    "drops": json.dumps(dict(sorted(counts.items()))),
                    "rank": current_rank(),
                    "host": socket.gethostname(),
                    "fingerprint": "",  # the commit writes the stage's
                }
            )
            totals.update({"cached": cached, "shards_cached": 1, **counts})
        return Rows(pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), files, +totals)

    def info(self) -> dict[str, Any]:
        return {**self._info, "ranks": self.world}

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Recorded with the run: the ranks, what the holder cleaned, the input shards cached before."""
        unique = len(set(shard_identities(self.inputs).values()))
        reused = unique - int(summary.get("counts", {}).get("shards_cached", 0))
        return {"ranks": self.world, "cleaned": dict(writer.cleaned), "shards_reused": reused}


# ------------------------------------------------------------------------------------------- the ranks


class Ranks(Protocol):
    """The processes of one run: who this is, and the two collectives the ranks executor needs."""

    rank: int
    world: int

    def broadcast(self, value: Any) -> Any:
        """``value`` of rank 0, on every rank."""

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank (a barrier too)."""


class OneProcess:
    rank, world = 0, 1

    def broadcast(self, value: Any) -> Any:
        return value

    def gather(self, value: Any) -> list[Any]:
        return [value]


class TorchRanks:
    """The default process group of ``torch.distributed`` (what ``accelerate`` and ``torchrun`` set up)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def broadcast(self, value: Any) -> Any:
        box = [value]
        self._dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        self._dist.all_gather_object(out, value)
        return out


def current_ranks() -> Ranks:
    """The processes of this run: the ``torch.distributed`` group when there is one, else this one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchRanks()
    return OneProcess()


class RanksExecutor:
    """The processes of a training run as the runner's executor.

    Rank 0 calls :func:`~ieiw.storage.runner.run_stage` with it; every other rank calls :meth:`serve`.
    :meth:`probe` asks every rank what it computes on (they must agree); :meth:`run_all` sends every
    pending batch to every rank, each runs its share (``batches[rank::world]``), and the reports come
    back to rank 0 in order. A failure on any rank raises :class:`CacheFailed` on rank 0, which
    :meth:`stop` passes on to the others; :meth:`stop` also hands them rank 0's result.
    """

    def __init__(self, ranks: Ranks | None = None, what: str = "batches") -> None:
        self.ranks = ranks or current_ranks()
        self.what = what

    # rank 0 -------------------------------------------------------------------------------------

    def probe(self) -> WorkerEnv:
        self.ranks.broadcast(("probe",))
        envs = self.ranks.gather(WorkerEnv.here())
        if len(set(envs)) > 1:
            kinds = ", ".join(f"rank {r}: {e.describe()}" for r, e in enumerate(envs))
            raise WorkerMismatch(f"the ranks of this run compute on different devices ({kinds})")
        return envs[0]

    def run_all(self, fn: Callable[..., Any], args_list: list[tuple]) -> list[Any]:
        self.ranks.broadcast(("run", fn, args_list))
        return self._share(fn, args_list)

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        """One batch on this rank alone (the runner uses :meth:`run_all`)."""
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as error:  # noqa: BLE001 - the future carries it
            future.set_exception(error)
        return future

    def stop(self, error: str | None = None, result: Any = None) -> None:
        """Let the serving ranks go: with rank 0's ``error`` they raise it, else they return ``result``."""
        self.ranks.broadcast(("stop", error, result))

    # every other rank ---------------------------------------------------------------------------

    def serve(self) -> Any:
        """Run this rank's share of what rank 0 sends until it stops; returns rank 0's result."""
        while True:
            message = self.ranks.broadcast(None)
            if message[0] == "probe":
                self.ranks.gather(WorkerEnv.here())
            elif message[0] == "run":
                with contextlib.suppress(CacheFailed):  # rank 0 raised it too, and says so with stop
                    self._share(message[1], message[2])
            else:
                _, error, result = message
                if error is not None:
                    raise CacheFailed(error)
                return result

    # both -----------------------------------------------------------------------------------------

    def _share(self, fn: Callable[..., Any], args_list: list[tuple]) -> list[Any]:
        rank, world = self.ranks.rank, self.ranks.world
        mine = range(rank, len(args_list), world)
        outcome: dict[int, Any] | str
        try:
            outcome = {}
            for i in tqdm(mine, desc=self.what, unit="batch", disable=rank != 0 or not mine):
                outcome[i] = fn(*args_list[i])
        except Exception:  # noqa: BLE001 - reported on every rank below
            outcome = traceback.format_exc(limit=8)
        everyone = self.ranks.gather(outcome)  # when this returns, every rank has committed (or failed)
        failed = [f"rank {r}: {o}" for r, o in enumerate(everyone) if isinstance(o, str)]
        if failed:
            raise CacheFailed(f"{self.what} failed:\n" + "\n".join(failed))
        merged: dict[int, Any] = {}
        for part in everyone:
            merged.update(part)
        return [merged[i] for i in range(len(args_list))]


# ------------------------------------------------------------------------------------------- the pass


@dataclass
class CacheResult:
    """The cache shard of each input shard (None: none of its samples could be cached), counts, and
    the run's summary (rank 0's)."""

    folder: str
    shards: dict[str, str | None]
    counts: Counter
    summary: StageSummary | None = None

    def urls(self, inputs: Iterable[str]) -> list[str]:
        """The cache shards of ``inputs`` (expanded as a reader does), in their order."""
        return [s for u in expand_urls(list(inputs)) if (s := self.shards.get(u))]


def cache_result(stage: LatentCacheStage, summary: StageSummary) -> CacheResult:
    """Which cache shard holds each input of ``stage`` (read from its committed parts), and counts."""
    identities = shard_identities(stage.inputs)
    table = manifest.read_table(stage.url, columns=["input_identity", "shard"], schema=CACHE_SCHEMA)
    by_identity = dict(zip(*(table.column(c).to_pylist() for c in ("input_identity", "shard")), strict=True))
    shards: dict[str, str | None] = {}
    for url in stage.inputs:
        if identities[url] not in by_identity:
            raise CacheFailed(f"{url}: its cache batch was not committed")
        name = by_identity[identities[url]]
        shards[url] = fs.join(stage.url, manifest.SHARD_DIR, name) if name else None
    counts = Counter(summary.counts)
    counts["shards_reused"] = summary.extra["shards_reused"]
    return CacheResult(stage.url, shards, +counts, summary)


def build_latent_cache(
    vae,
    shard_urls: Iterable[str],
    root: str,
    fingerprint: Fingerprint,
    ranks: Ranks | None = None,
    lease_wait: float = 600.0,
    info: dict | None = None,
) -> CacheResult:
    """Cache every input shard not cached yet under ``root`` (a stage folder per ``fingerprint``), with
    ``vae`` (loaded, on this process's device, in the dtype ``fingerprint`` names).

    Call it on every rank of a run with the same arguments (``ranks``: the run's processes, by default
    the ``torch.distributed`` group): rank 0 runs the stage (its lease, its cleaning), the ranks encode
    disjoint shares of the pending shards, and every rank gets the same :class:`CacheResult`.
    """
    ranks = ranks or current_ranks()
    wanted = fingerprint.settings["encode_dtype"]
    if str(vae.dtype).removeprefix("torch.") != wanted:
        raise ValueError(f"the VAE computes in {vae.dtype}, but the cache fingerprint says {wanted}")
    stage = LatentCacheStage(list(expand_urls(list(shard_urls))), root, fingerprint, ranks.world, info)
    executor = RanksExecutor(ranks, "caching latents")
    with handing_in(stage.vae_token, vae):
        if ranks.rank != 0:
            return executor.serve()
        try:
            summary = run_stage(stage, executor, RunOptions(rebuild="changed", lease_wait=lease_wait))
            result = cache_result(stage, summary)
        except BaseException as error:  # tell the other ranks instead of leaving them waiting
            executor.stop(error=f"rank 0: {type(error).__name__}: {error}")
            raise
        executor.stop(result=result)
        return result
