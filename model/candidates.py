"""Candidate edits for human review: N edits per source sample, each with the settings that made it.

The candidate shard format (WebDataset tar, one group per source sample, keyed by the source key):

- ``<key>.src.png``: the source image;
- ``<key>.cand_00.png`` ... ``<key>.cand_NN.png``: the candidate edits, in display order;
- ``<key>.json``: a :class:`CandidateHeader`: the instruction, the source sample's metadata (its
  provenance) and one :class:`CandidateSetting` per candidate (seed, guidance scales, checkpoint).

:func:`generate_candidates` makes them with a loaded InstructPix2Pix-style pipeline, batched over
samples; :class:`CandidateShardWriter` writes them; :func:`iter_candidate_sets` streams them back;
:class:`CandidateIndex` gives random access to single images (for the review app) without
unpacking the shards.

:func:`build_candidates` (``ieiw candidates``) writes them as a stage folder
(:mod:`ieiw.storage.stage_folder`): its fingerprint (:func:`candidates_fingerprint`) holds the
checkpoint's identity by content (which is also what each :class:`CandidateSetting` names, never the
checkpoint's path), the candidate settings and the identities of the source shards; the source
samples are cut into batches of ``per_shard`` in input order, one candidate shard and one committed
manifest part per batch, so a killed run resumes where it stopped and readers see only committed
batches.
"""

from __future__ import annotations

import io
import itertools
import random
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ieiw.model.family import size_kwargs
from ieiw.model.inputs import input_identities
from ieiw.storage import fs, manifest
from ieiw.storage.commit import batch_name
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import model_identity
from ieiw.storage.images import decode_image, encode_image
from ieiw.storage.schema import Sample, SampleMeta, stable_key
from ieiw.storage.shards import SHARD_SUFFIX, expand_shard_urls, iter_samples, iter_tar_groups
from ieiw.storage.stage_folder import Rebuild, open_stage

FORMAT = "ieiw-candidates/1"
DEFAULT_TEXT_GUIDANCE = (5.0, 7.5, 10.0, 12.5)
DEFAULT_IMAGE_GUIDANCE = (1.0, 1.25, 1.5, 1.75, 2.0)


class CandidateSetting(BaseModel):
    """How one candidate was made."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    text_guidance: float
    image_guidance: float
    steps: int
    checkpoint: str  # the checkpoint's identity by content (``sha256-tree:..``, ``hf:id@commit``)


class CandidateHeader(BaseModel):
    """The ``json`` member of a candidate group."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    key: str
    instruction: str
    source_meta: SampleMeta | None = None
    settings: list[CandidateSetting] = Field(default_factory=list)


@dataclass
class CandidateSet:
    """A source sample and its candidate edits (HxWx3 ``uint8`` arrays), in display order."""

    header: CandidateHeader
    source: np.ndarray
    candidates: list[np.ndarray] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.header.key


def candidate_member(index: int) -> str:
    return f"cand_{index:02d}.png"


# ---------------------------------------------------------------------------------------------- writing


class CandidateShardWriter:
    """Writes candidate sets into ``<directory>/<prefix>-NNNN.tar``, at most ``max_sets`` per shard.

    Each shard is written under a hidden temporary name and renamed when complete
    (:func:`ieiw.storage.fs.atomic_open`), so a killed run leaves no half-written shard.
    """

    def __init__(self, directory: str, prefix: str = "candidates", max_sets: int = 50) -> None:
        self.directory = directory
        self.prefix = prefix
        self.max_sets = max_sets
        self.written: list[str] = []
        self._context = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def __enter__(self) -> CandidateShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._context is not None:
            assert self._tar is not None
            self._tar.close()
            self._context.__exit__(exc_type, exc, tb)  # removes the temporary file
            self._context = self._tar = None

    def write(self, candidate_set: CandidateSet) -> str:
        """Add one candidate set; returns the URL of its shard."""
        header = candidate_set.header
        if len(header.settings) != len(candidate_set.candidates):
            raise ValueError(
                f"{header.key}: {len(candidate_set.candidates)} images for {len(header.settings)} settings"
            )
        if self._tar is not None and self._count >= self.max_sets:
            self._finish()
        if self._tar is None:
            self._start()
        assert self._tar is not None
        members = {"src.png": encode_image(candidate_set.source, "png")}
        for index, image in enumerate(candidate_set.candidates):
            members[candidate_member(index)] = encode_image(image, "png")
        members["json"] = header.model_dump_json().encode("utf-8")
        mtime = time.time()
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{header.key}.{ext}")
            info.size, info.mtime = len(data), mtime
            self._tar.addfile(info, io.BytesIO(data))
        self._count += 1
        return self._url

    def close(self) -> list[str]:
        if self._tar is not None:
            self._finish()
        return self.written

    def _start(self) -> None:
        url = fs.join(self.directory, f"{self.prefix}-{len(self.written):04d}{SHARD_SUFFIX}")
        self._context = fs.atomic_open(url)
        handle = self._context.__enter__()
        self._tar = tarfile.open(fileobj=handle, mode="w|", format=tarfile.USTAR_FORMAT)
        self._url, self._count = url, 0

    def _finish(self) -> None:
        assert self._tar is not None and self._context is not None
        self._tar.close()
        self._context.__exit__(None, None, None)
        self.written.append(self._url)
        self._tar = self._context = None


def write_candidate_sets(
    sets: Iterable[CandidateSet], directory: str, prefix: str = "candidates", max_sets: int = 50
) -> list[str]:
    """Write all ``sets``; returns the shard URLs."""
    with CandidateShardWriter(directory, prefix, max_sets) as writer:
        for candidate_set in sets:
            writer.write(candidate_set)
    return writer.written


# ---------------------------------------------------------------------------------------------- reading


def decode_candidate_set(members: dict[str, bytes]) -> CandidateSet:
    header = CandidateHeader.model_validate_json(members["json"])
    if header.format != FORMAT:
        raise ValueError(f"{header.key}: unknown candidate format {header.format!r}")
    candidates = [decode_image(members[candidate_member(i)]) for i in range(len(header.settings))]
    return CandidateSet(header=header, source=decode_image(members["src.png"]), candidates=candidates)


def iter_candidate_sets(urls: Iterable[str] | str) -> Iterator[CandidateSet]:
    """Stream every candidate set of the given shards or folders of shards."""
    for url in expand_shard_urls(urls):
        for _, members in iter_tar_groups(url):
            yield decode_candidate_set(members)


def iter_candidate_headers(urls: Iterable[str] | str) -> Iterator[CandidateHeader]:
    """Stream only the headers (no image decoding)."""
    for url in expand_shard_urls(urls):
        for _, members in iter_tar_groups(url):
            yield CandidateHeader.model_validate_json(members["json"])


@dataclass(frozen=True)
class MemberLocation:
    url: str
    offset: int
    size: int


class CandidateIndex:
    """Random access to the members of candidate shards: where each image's bytes lie in its tar.

    Building it reads only tar headers and the small ``json`` members; an image is then one seek
    and one read, so the review app serves thousands of candidates without unpacking anything.
    """

    def __init__(self) -> None:
        self.headers: dict[str, CandidateHeader] = {}
        self.sources: list[str] = []  # what it was built from (a stage folder, shards, folders)
        self._members: dict[tuple[str, str], MemberLocation] = {}

    @classmethod
    def build(cls, urls: Iterable[str] | str) -> CandidateIndex:
        index = cls()
        index.sources = [urls] if isinstance(urls, str) else list(urls)
        for url in expand_shard_urls(index.sources):
            index._add_shard(url)
        return index

    def identity(self) -> dict[str, str]:
        """What the index holds, by identity (for a fingerprint's ``upstream``): its sources' identities,
        or, for an index not built from shards, a digest of its headers."""
        if self.sources:
            found = input_identities(self.sources)
            return {"candidates" if len(found) == 1 else f"candidates:{k}": v for k, v in found.items()}
        headers = [self.headers[k].model_dump(mode="json") for k in sorted(self.headers)]
        return {"candidates": "headers:" + stable_key(headers)}

    def _add_shard(self, url: str) -> None:
        filesystem, path = fs.get_fs(url)
        with filesystem.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r:") as tar:
            for info in tar:
                if not info.isfile() or "." not in info.name:
                    continue
                key, ext = info.name.rsplit("/", 1)[-1].split(".", 1)
                self._members[(key, ext)] = MemberLocation(url, info.offset_data, info.size)
                if ext == "json":
                    extracted = tar.extractfile(info)
                    assert extracted is not None
                    header = CandidateHeader.model_validate_json(extracted.read())
                    if header.format != FORMAT:
                        raise ValueError(f"{url}: {header.key}: unknown candidate format {header.format!r}")
                    self.headers[header.key] = header

    def __len__(self) -> int:
        return len(self.headers)

    def __contains__(self, key: str) -> bool:
        return key in self.headers

    def read(self, key: str, member: str) -> bytes:
        """The bytes of ``<key>.<member>`` (e.g. ``src.png``, ``cand_03.png``); KeyError if absent."""
        location = self._members[(key, member)]
        filesystem, path = fs.get_fs(location.url)
        with filesystem.open(path, "rb") as handle:
            handle.seek(location.offset)
            return handle.read(location.size)

    def image(self, key: str, member: str) -> np.ndarray:
        return decode_image(self.read(key, member))


# ---------------------------------------------------------------------------------------------- generation


def candidate_settings(
    source_key: str,
    n: int,
    checkpoint: str,
    steps: int,
    base_seed: int = 0,
    text_guidance: Sequence[float] = DEFAULT_TEXT_GUIDANCE,
    image_guidance: Sequence[float] = DEFAULT_IMAGE_GUIDANCE,
) -> list[CandidateSetting]:
    """``n`` settings for one source, in generation order: guidance pairs cycling over the grid.

    Candidate ``k`` of every source has the same guidance pair (so sources batch together), and a
    seed derived from the source key, so two sources never share noise and a rerun repeats it.
    """
    if n < 1 or not text_guidance or not image_guidance:
        raise ValueError("need n >= 1 and at least one text and one image guidance scale")
    grid = [(float(t), float(i)) for t in text_guidance for i in image_guidance]
    return [
        CandidateSetting(
            seed=int(stable_key(source_key, base_seed, k)[:8], 16),
            text_guidance=grid[k % len(grid)][0],
            image_guidance=grid[k % len(grid)][1],
            steps=steps,
            checkpoint=checkpoint,
        )
        for k in range(n)
    ]


def display_order(source_key: str, n: int, base_seed: int = 0) -> list[int]:
    """A seeded shuffle of the candidates, so a grid position does not reveal the guidance scales."""
    order = list(range(n))
    random.Random(stable_key(source_key, base_seed, "order")).shuffle(order)
    return order


def _working_size(pipe, width: int, height: int, resolution: int) -> tuple[int, int]:
    """Scale so the long side is ``resolution``, both sides multiples of the model's downsampling."""
    multiple = pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    scale = resolution / max(width, height)
    return (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )


def _run_pipeline(
    pipe, images: list[Image.Image], instructions: list[str], setting: CandidateSetting, seeds: list[int]
) -> list[np.ndarray]:
    import torch

    generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    output = pipe(
        list(instructions),
        image=images,
        num_inference_steps=setting.steps,
        guidance_scale=setting.text_guidance,
        image_guidance_scale=setting.image_guidance,
        generator=generators,
        output_type="np",
        **size_kwargs(pipe, *images[0].size),
    )
    return [(np.clip(a, 0, 1) * 255).round().astype(np.uint8) for a in output.images]


def generate_candidates(
    pipe,
    samples: Iterable[Sample],
    n: int = 20,
    checkpoint: str = "",
    steps: int = 20,
    resolution: int = 256,
    base_seed: int = 0,
    text_guidance: Sequence[float] = DEFAULT_TEXT_GUIDANCE,
    image_guidance: Sequence[float] = DEFAULT_IMAGE_GUIDANCE,
    batch_size: int = 8,
    progress: Any = None,
) -> Iterator[CandidateSet]:
    """Make ``n`` candidate edits of each sample's source with a loaded pipeline, batched over samples.

    ``pipe`` is a diffusers ``StableDiffusionInstructPix2PixPipeline`` or its SDXL counterpart (or a
    callable with its signature), loaded once by the caller. Up to ``batch_size`` samples of the same
    working size go through the pipeline together, once per candidate index, each with its own seeded
    generator, so a candidate does not depend on which samples shared its batch. ``progress`` (optional)
    is called with the number of samples finished.
    """
    chunk: list[Sample] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) >= batch_size:
            yield from _generate_chunk(
                pipe,
                chunk,
                n,
                checkpoint,
                steps,
                resolution,
                base_seed,
                text_guidance,
                image_guidance,
                progress,
            )
            chunk = []
    if chunk:
        yield from _generate_chunk(
            pipe, chunk, n, checkpoint, steps, resolution, base_seed, text_guidance, image_guidance, progress
        )


def _generate_chunk(
    pipe,
    chunk: list[Sample],
    n: int,
    checkpoint: str,
    steps: int,
    resolution: int,
    base_seed: int,
    text_guidance: Sequence[float],
    image_guidance: Sequence[float],
    progress: Any,
) -> Iterator[CandidateSet]:
    settings = [
        candidate_settings(s.key, n, checkpoint, steps, base_seed, text_guidance, image_guidance)
        for s in chunk
    ]
    sources: list[Image.Image] = []
    for sample in chunk:
        image = Image.fromarray(sample.source).convert("RGB")
        sources.append(image.resize(_working_size(pipe, *image.size, resolution), Image.Resampling.BICUBIC))
    outputs: list[list[np.ndarray | None]] = [[None] * n for _ in chunk]
    for k in range(n):
        groups: dict[tuple, list[int]] = {}  # same size and guidance scales: one pipeline call
        for p, setting in enumerate(row[k] for row in settings):
            groups.setdefault((sources[p].size, setting.text_guidance, setting.image_guidance), []).append(p)
        for positions in groups.values():
            images = _run_pipeline(
                pipe,
                [sources[p] for p in positions],
                [chunk[p].meta.instruction for p in positions],
                settings[positions[0]][k],
                [settings[p][k].seed for p in positions],
            )
            for p, image in zip(positions, images):
                outputs[p][k] = image
    for p, sample in enumerate(chunk):
        order = display_order(sample.key, n, base_seed)
        header = CandidateHeader(
            key=sample.key,
            instruction=sample.meta.instruction,
            source_meta=sample.meta,
            settings=[settings[p][k] for k in order],
        )
        images = [outputs[p][k] for k in order]
        if any(image is None for image in images):
            raise RuntimeError(f"{sample.key}: the pipeline returned fewer images than requested")
        yield CandidateSet(header=header, source=np.asarray(sources[p]), candidates=images)
        if progress is not None:
            progress(1)


# ---------------------------------------------------------------------------------------------- the stage

STAGE = "candidates"
CANDIDATES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # the source sample's key (a candidate set's key)
        ("record_id", pa.string()),  # the same: a resumed run skips committed sources
        ("batch", pa.string()),
        ("shard", pa.string()),
        ("instruction", pa.string()),
        ("candidates", pa.int32()),
        ("fingerprint", pa.string()),
    ]
)


def candidates_fingerprint(
    model: str,
    shard_urls: Sequence[str],
    n: int = 20,
    steps: int = 20,
    resolution: int = 256,
    base_seed: int = 0,
    text_guidance: Sequence[float] = DEFAULT_TEXT_GUIDANCE,
    image_guidance: Sequence[float] = DEFAULT_IMAGE_GUIDANCE,
) -> Fingerprint:
    """What determines a candidates folder: the checkpoint by content, the settings, the source shards
    by identity (how many sources, and how they are batched, only say how much is made)."""
    return Fingerprint(
        stage=STAGE,
        settings={
            "format": FORMAT,
            "n": int(n),
            "steps": int(steps),
            "resolution": int(resolution),
            "seed": int(base_seed),
            "text_guidance": [float(t) for t in text_guidance],
            "image_guidance": [float(i) for i in image_guidance],
        },
        models={"model": model_identity(model)},
        upstream=input_identities(list(shard_urls)),
    )


def _source_chunks(
    samples: Iterable[Sample], size: int, done: set[str]
) -> Iterator[tuple[int, list[Sample]]]:
    """The sources cut in input order into chunks of ``size`` (committed ones included, so a chunk
    never depends on what a previous run finished); yields (sources in the chunk, pending ones)."""
    seen: set[str] = set()
    stream = iter(samples)
    while chunk := list(itertools.islice(stream, size)):
        pending = []
        for sample in chunk:
            if sample.key not in seen and sample.key not in done:
                pending.append(sample)
            seen.add(sample.key)
        yield len(chunk), pending


def build_candidates(
    load_pipe: Callable[[], Any],
    model: str,
    shard_urls: Sequence[str],
    out_url: str,
    *,
    n: int = 20,
    steps: int = 20,
    resolution: int = 256,
    base_seed: int = 0,
    text_guidance: Sequence[float] = DEFAULT_TEXT_GUIDANCE,
    image_guidance: Sequence[float] = DEFAULT_IMAGE_GUIDANCE,
    batch_size: int = 8,
    per_shard: int = 50,
    limit: int | None = None,
    rebuild: Rebuild = "no",
    progress: Any = None,
) -> dict:
    """Generate the candidates of the first ``limit`` source samples into the stage folder ``out_url``.

    Opens the folder with :func:`candidates_fingerprint` (another fingerprint raises
    :class:`~ieiw.storage.stage_folder.StageChanged` before any work unless ``rebuild``), skips sources
    already committed, and calls ``load_pipe`` (which loads the pipeline of ``model``) only when there is
    work. Returns a summary: sets written, sets already there, shards, the stage's fingerprint.
    """
    fingerprint = candidates_fingerprint(
        model, shard_urls, n, steps, resolution, base_seed, text_guidance, image_guidance
    )
    checkpoint = fingerprint.models["model"] or model
    written = reused = 0
    shards: list[str] = []
    with open_stage(out_url, fingerprint, rebuild=rebuild, info={"model": model}) as writer:
        done = writer.completed_record_ids()
        samples = iter_samples(list(shard_urls))
        pipe = None
        for total, pending in _source_chunks(itertools.islice(samples, limit), per_shard, done):
            reused += total - len(pending)
            if progress is not None and total > len(pending):
                progress(total - len(pending))
            if not pending:
                continue
            pipe = pipe if pipe is not None else load_pipe()
            batch = batch_name(STAGE, [s.key for s in pending])
            rows = []
            with CandidateShardWriter(
                fs.join(out_url, manifest.SHARD_DIR), prefix=batch, max_sets=per_shard
            ) as shard_writer:
                for candidate_set in generate_candidates(
                    pipe,
                    pending,
                    n,
                    checkpoint,
                    steps,
                    resolution,
                    base_seed,
                    text_guidance,
                    image_guidance,
                    batch_size,
                    progress,
                ):
                    shard = shard_writer.write(candidate_set)
                    rows.append(
                        {
                            "key": candidate_set.key,
                            "record_id": candidate_set.key,
                            "batch": batch,
                            "shard": shard.rsplit("/", 1)[-1],
                            "instruction": candidate_set.header.instruction,
                            "candidates": len(candidate_set.candidates),
                        }
                    )
            writer.commit_files(batch, pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA))
            written += len(rows)
            shards += shard_writer.written
        writer.finish({"sets_written": written, "sets_reused": reused}, schema=CANDIDATES_SCHEMA)
    return {
        "written": written,
        "reused": reused,
        "shards": shards,
        "fingerprint": writer.digest,
        "checkpoint": checkpoint,
        "rebuilt": writer.rebuilt,
        "cleaned": writer.cleaned,
    }
