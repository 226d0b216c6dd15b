"""The `multitask` flow: keypoint, segmentation and enhancement samples rendered as edits."""

from __future__ import annotations

import json

from prefect import flow

from ieiw.flows.config import RunnerConfig
from ieiw.flows.fingerprints import model_paths, section_fingerprint
from ieiw.flows.models import cached_model
from ieiw.flows.stage_runner import run_stage
from ieiw.pipelines.multitask.captions import load_captions
from ieiw.pipelines.multitask.config import MultitaskConfig
from ieiw.pipelines.multitask.records import MultitaskRecord
from ieiw.pipelines.multitask.stage import iter_multitask_records, multitask_stage
from ieiw.storage import fs
from ieiw.storage.schema import Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import Rebuild

STAGE = "multitask"


def multitask_batch(records: list[MultitaskRecord], config: MultitaskConfig) -> list[Result]:
    """One batch through the renderers, with the captions files parsed once per process."""
    captions = (
        cached_model(
            f"captions:{json.dumps(sorted(config.captions))}", lambda: load_captions(config.captions)
        )
        if config.captions
        else {}
    )
    return multitask_stage(records, config, captions)


@flow(name="multitask", log_prints=True)
def multitask(
    config: MultitaskConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
    rebuild: Rebuild = "no",
) -> dict:
    """Write multi-task samples as shards under ``<output>/multitask``; resumes a killed run."""
    runner = runner or RunnerConfig()
    stage_url = fs.join(output, STAGE)
    summary = run_stage(
        STAGE,
        iter_multitask_records(config),
        multitask_batch,
        config,
        stage_url,
        shards,
        batch_size=config.batch_size,
        runner=runner,
        fingerprint=section_fingerprint(STAGE, config),
        rebuild=rebuild,
        info={"models": model_paths(config)},
    )
    return summary
