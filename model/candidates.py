"""Candidate edits for human review: N edits per source sample, made by a trained checkpoint.

:func:`generate_candidates` makes them with a loaded InstructPix2Pix-style pipeline, batched over
samples, in the format of :mod:`ieiw.model.candidate_shards`.

:func:`build_candidates` (``ieiw candidates``) writes them as a stage folder
(:mod:`ieiw.storage.stage_folder`): its fingerprint (:func:`candidates_fingerprint`) holds the
checkpoint's identity by content (which is also what each :class:`CandidateSetting` names, never the
checkpoint's path), the candidate settings and the identities of the source shards; the source
samples are cut into batches of ``per_shard`` in input order, one candidate shard and one committed
manifest part per batch, so a killed run resumes where it stopped and readers see only committed
batches.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from ieiw.model.candidate_shards import (
    FORMAT,
    CandidateHeader,
    CandidateSet,
    CandidateSetting,
    CandidateShardWriter,
)
from ieiw.model.family import size_kwargs
from ieiw.model.inputs import input_identities
from ieiw.storage import fs, manifest
from ieiw.storage.commit import batch_name
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import model_identity
from ieiw.storage.schema import Sample, stable_key
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import Rebuild, open_stage

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
