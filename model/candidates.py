"""Candidate edits for human review: N edits per source sample, made by a trained checkpoint.

:func:`generate_candidates` makes them with a loaded InstructPix2Pix-style pipeline, batched over
samples, in the format of :mod:`ieiw.model.candidate_shards`.

:class:`CandidatesStage` (``ieiw candidates``, :func:`build_candidates`) is a ``rows`` stage run by the
one runner (:func:`ieiw.storage.runner.run_stage`): its fingerprint (:class:`CandidatesConfig`'s fields,
read by :func:`ieiw.storage.config.config_fingerprint`) holds the trained model's identity by its weights
and configs (:func:`ieiw.storage.identity.model_identity`, which is also what each
:class:`CandidateSetting` names, never the checkpoint's path), the candidate settings and the identities
of the source shards; the source samples are its records in input order (the sample key is the record
id), cut by the runner into batches of ``per_shard``, one candidate shard and one committed manifest part
per batch, so a killed run resumes where it stopped and readers see only committed batches. The edit
pipeline is one of the stage's models, loaded once per worker.
"""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ieiw.model.candidate_shards import (
    FORMAT,
    CandidateHeader,
    CandidateSet,
    CandidateSetting,
    candidate_shard,
)
from ieiw.model.family import size_kwargs
from ieiw.model.inputs import input_identities
from ieiw.storage import fs, manifest
from ieiw.storage.commit import batch_name
from ieiw.storage.config import (
    WorkerEnv,
    config_fingerprint,
    input_folder,
    limit,
    model_ref,
    operational,
    precision,
)
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import model_identity
from ieiw.storage.runner import RunOptions, StageSummary, ThreadExecutor, run_stage
from ieiw.storage.schema import Sample, stable_key
from ieiw.storage.shards import SHARD_SUFFIX, iter_samples
from ieiw.storage.stage import ModelSpec, Rows, Stage, gpu_tags, model_key
from ieiw.storage.stage_folder import Rebuild

DEFAULT_TEXT_GUIDANCE = (5.0, 7.5, 10.0, 12.5)
DEFAULT_IMAGE_GUIDANCE = (1.0, 1.25, 1.5, 1.75, 2.0)

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


class CandidatesConfig(BaseModel):
    """What ``ieiw candidates`` makes: N edits per source sample with a trained model, and how."""

    model_config = ConfigDict(extra="forbid")

    # a trained model folder (diffusers layout) or a hub id: by its weights and configs
    model: str = model_ref()
    shards: list[str] = input_folder()  # source shards, folders or stage folders (by identity upstream)
    n: int = Field(default=20, ge=1)
    steps: int = Field(default=20, ge=1)
    resolution: int = Field(default=256, gt=0)
    seed: int = 0
    text_guidance: list[float] = Field(default_factory=lambda: list(DEFAULT_TEXT_GUIDANCE), min_length=1)
    image_guidance: list[float] = Field(default_factory=lambda: list(DEFAULT_IMAGE_GUIDANCE), min_length=1)
    # fp16: half precision on a GPU (fp32 on a CPU), as the edit pipeline loads by default
    dtype: Literal["fp16", "fp32"] = precision("fp16")
    device: str = operational("auto")
    batch_size: int = operational(8, ge=1)  # samples per pipeline call
    per_shard: int = operational(50, ge=1)  # samples per batch: one candidate shard each
    limit: int | None = limit(None)  # at most this many source samples


@dataclass(frozen=True)
class SourceRecord:
    """One source sample to make candidates of (its key is the record id)."""

    record_id: str
    sample: Sample


def load_pipeline(model: str, device: str, dtype: str) -> Any:
    """The edit pipeline of ``model`` on ``device`` (fp16 on a GPU unless ``dtype`` is fp32)."""
    from ieiw.model.inference import load_edit_pipeline

    return load_edit_pipeline(model, device=device, half=None if dtype == "fp16" else False)


class CandidatesStage(Stage):
    """N candidate edits of each source sample, ``per_shard`` samples a batch, one candidate shard each."""

    name = STAGE
    writes = "rows"
    schema = CANDIDATES_SCHEMA

    def __init__(self, config: CandidatesConfig, url: str) -> None:
        super().__init__(url, config.per_shard, tags=gpu_tags(True, config.device))
        self.config = config
        # what each candidate's setting names as its checkpoint: the model by identity, never its path
        self.checkpoint = model_identity(config.model) or config.model

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        return config_fingerprint(
            STAGE, self.config, env, upstream=input_identities(self.config.shards), extra={"format": FORMAT}
        )

    def records(self) -> Iterator[SourceRecord]:
        samples = iter_samples(list(self.config.shards))
        if self.config.limit is not None:
            samples = itertools.islice(samples, self.config.limit)
        for sample in samples:
            yield SourceRecord(sample.key, sample)

    def total(self) -> int | None:
        return self.config.limit

    def models(self) -> Mapping[str, ModelSpec]:
        config = self.config
        return {
            "pipe": ModelSpec(
                model_key("edit_pipeline", None, self.checkpoint, config.dtype),
                partial(load_pipeline, config.model, config.device, config.dtype),
                config.device,
            )
        }

    def run(self, records: list[SourceRecord], models: Mapping[str, Any]) -> Rows:
        config = self.config
        batch = batch_name(self.batch_prefix, [r.record_id for r in records])
        shard = f"{batch}{SHARD_SUFFIX}"
        sets = list(
            generate_candidates(
                models["pipe"],
                [r.sample for r in records],
                config.n,
                self.checkpoint,
                config.steps,
                config.resolution,
                config.seed,
                config.text_guidance,
                config.image_guidance,
                config.batch_size,
            )
        )
        rows = [
            {
                "key": s.key,
                "record_id": s.key,
                "batch": batch,
                "shard": shard,
                "instruction": s.header.instruction,
                "candidates": len(s.candidates),
                "fingerprint": "",  # the commit writes the stage's
            }
            for s in sets
        ]
        files = {fs.join(manifest.SHARD_DIR, shard): candidate_shard(sets)}
        return Rows(pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA), files, {"sets": len(sets)})

    def info(self) -> dict[str, Any]:
        return {"model": self.config.model, "checkpoint": self.checkpoint}


def build_candidates(
    config: CandidatesConfig,
    out_url: str,
    rebuild: Rebuild = "no",
    progress: Callable[[int, int | None], None] | None = None,
    executor: Any = None,
) -> StageSummary:
    """Generate the candidates of the first ``config.limit`` source samples into the stage ``out_url``
    (on ``executor``, by default one thread of this process; the pipeline is loaded only when there is
    work). Another fingerprint raises :class:`~ieiw.storage.stage_folder.StageChanged` before any work
    unless ``rebuild``; committed sources are never made again. ``progress(done, to do)`` is called
    after each batch. The summary's ``rows`` are the sets written now, ``records_committed_before`` those
    already there, ``batches`` the shards written now."""
    stage = CandidatesStage(config, out_url)
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(ThreadExecutor(1))
        return run_stage(stage, executor, RunOptions(rebuild=rebuild), progress)
