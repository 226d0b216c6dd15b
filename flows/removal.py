"""The `removal` flow: PhraseCut regions inpainted away, plus the reversed add pairs."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import ijson
from prefect import flow

from ieiw.flows.config import RemovalConfig, RunnerConfig
from ieiw.flows.fingerprints import input_key, model_paths, section_fingerprint
from ieiw.flows.models import cached_model, gpu_tags, model_key
from ieiw.flows.stage_runner import complete_stage_summary, run_stage
from ieiw.pipelines.inpaint import build_inpainter
from ieiw.pipelines.removal import removal_stage
from ieiw.pipelines.sources.demo import materialize_demo_images
from ieiw.pipelines.sources.phrasecut import (
    PhraseCutRecord,
    PhraseCutSession,
    group_sessions,
    iter_records,
    load_image_data,
)
from ieiw.storage import fs
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.schema import Drop, Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import Rebuild

STAGE = "removal"


def removal_batch(records: list[PhraseCutRecord | PhraseCutSession], config: RemovalConfig) -> list[Result]:
    """One batch through the removal stage, with the inpainter loaded once per process."""
    inpaint = config.inpaint
    inpainter = cached_model(
        model_key("inpainter", inpaint), lambda: build_inpainter(inpaint), inpaint.device, inpaint.batch_size
    )
    return removal_stage(records, inpainter, config.settings())


def removal_items(config: RemovalConfig) -> Iterator[PhraseCutRecord | PhraseCutSession | Drop]:
    """The records to remove (``limit`` counts annotation tasks); with sessions, grouped by image."""
    source = config.source
    image_data = load_image_data(source.image_data) if source.image_data else None
    items = itertools.chain.from_iterable(
        iter_records(a, source.images, source.dataset, source.license, source.url_template, image_data)
        for a in source.annotations
    )
    items = itertools.islice(items, config.limit) if config.limit is not None else items
    if config.sessions is not None:
        return group_sessions(items, config.sessions.max_turns, config.sessions.window)
    return items


def count_tasks(config: RemovalConfig) -> int | None:
    """How many tasks the annotation files hold (a cheap streaming pass), for progress; None if unreadable."""
    total = 0
    for path in config.source.annotations:
        try:
            with open(path, "rb") as handle:
                total += sum(1 for _ in ijson.items(handle, "item.task_id"))
        except (OSError, ijson.JSONError):
            return None
    return min(total, config.limit) if config.limit is not None else total


def removal_fingerprint(config: RemovalConfig) -> Fingerprint:
    """What determines the removal stage's output (the plan compares it with the recorded one too)."""
    return section_fingerprint(STAGE, config.fingerprinted())


def removal_complete(config: RemovalConfig, output: str, shards: ShardSpec | None) -> dict | None:
    """The no-work summary when the removal stage is complete for this config (its flow need not run).

    Only when every annotation file is a local file, which the fingerprint holds by content (a URL or
    a missing file would be in it by name only, and must be read again)."""
    inputs = [*config.source.annotations, *([config.source.image_data] if config.source.image_data else [])]
    if any("://" in path or not os.path.isfile(path) for path in inputs):
        return None
    return complete_stage_summary(
        STAGE, fs.join(output, STAGE), removal_fingerprint(config), shards, input_key(config)
    )


@flow(name="removal", log_prints=True)
def removal(
    config: RemovalConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
    rebuild: Rebuild = "no",
) -> dict:
    """Write removal and add pairs as shards under ``<output>/removal``; resumes a killed run."""
    runner = runner or RunnerConfig()
    if config.source.materialize_demo_images:
        materialize_demo_images(config.source.images)
    stage_url = fs.join(output, STAGE)
    summary = run_stage(
        STAGE,
        removal_items(config),
        removal_batch,
        config,
        stage_url,
        shards,
        batch_size=config.batch_size,
        runner=runner,
        fingerprint=removal_fingerprint(config),
        rebuild=rebuild,
        info={"models": model_paths(config)},
        input_key=input_key(config),
        total=count_tasks(config) if config.sessions is None else None,  # sessions: fewer records
        tags=gpu_tags(config.inpaint.backend == "lama", config.inpaint.device),
    )
    return summary
