"""`ieiw_train`: a thin Prefect flow around :mod:`ieiw.model.curriculum` and :mod:`ieiw.model.trainer`.

Each stage of the config (one for a config without ``stages``) runs as its own subflow,
``ieiw_train_stage``, named after the stage, with a Markdown artifact of its steps, loss and the
data mix it saw; the parent flow keeps a progress artifact (stages done) and a summary. One process
(``num_processes`` 1) trains in the flow's own process. Several processes (GPUs) run as a
subprocess, ``accelerate launch --num_processes N -m ieiw.model.trainer CONFIG --stage NAME``, because
accelerate's workers must be separate processes. ``overrides`` (``ieiw train``'s ``--max-steps``,
``--base``..., as dotted field paths: :func:`ieiw.model.config.train_overrides`) travel with the config's
path to every task and process, which all read the config with them. Either way a rerun skips complete
stages and resumes the interrupted one from its last checkpoint, so the task's ``retries`` continue a
crashed run instead of restarting it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from ieiw.model.config import load_train_config, missing_stage_inputs
from ieiw.model.curriculum import (
    check_ready,
    figures_line,
    is_complete,
    mix_table,
    plan_stages,
    run_stage,
    run_summary,
    select,
)
from ieiw.storage.config import ConfigError

__all__ = ["accelerate_command", "run_summary", "train", "train_stage", "train_stage_flow"]


def accelerate_command(
    config_path: str, num_processes: int, stage: str | None = None, overrides: dict | None = None
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(num_processes),
        "-m",
        "ieiw.model.trainer",
        config_path,
    ]
    command += ["--stage", stage] if stage else []
    return command + (["--overrides", json.dumps(overrides)] if overrides else [])


@task(name="train-stage")
def train_stage(
    config_path: str, stage_name: str, num_processes: int = 1, overrides: dict | None = None
) -> dict:
    """Train (resume, or skip when complete) one stage and return its summary."""
    config = load_train_config(config_path, overrides=overrides)
    plan = plan_stages(config)
    stage = select(plan, stage_name)[0]
    if num_processes <= 1:
        return run_stage(stage, plan)
    if not is_complete(stage):  # a complete stage is skipped by the launched processes too
        check_ready(stage, plan)
    only = None if config.stages is None else stage_name
    command = accelerate_command(str(Path(config_path).resolve()), num_processes, only, overrides)
    subprocess.run(command, check=True)
    return {**run_summary(str(stage.output_dir)), "stage": stage.name, "skipped": False}


def artifact_key(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "stage"


def stage_markdown(summary: dict) -> str:
    out = Path(summary["output_dir"])
    state = "already complete, skipped" if summary.get("skipped") else "trained"
    return "\n".join(
        [
            f"# Stage `{summary['stage']}` ({state})",
            "",
            f"Model (diffusers layout): `{out}`",
            f"Steps: {summary['steps']}",
            f"Last loss: {summary['last_loss']}",
            *([f"Last figures: {figures}"] if (figures := figures_line(summary)) else []),
            f"Loss curve: `{summary['loss_curve']}`",
            f"TensorBoard: `tensorboard --logdir {out / 'logs'}`",
            "",
            "## Samples seen per shard set",
            "",
            mix_table(summary["mix"]),
        ]
    )


@flow(name="ieiw_train_stage", flow_run_name="stage-{stage_name}", log_prints=True)
def train_stage_flow(
    config_path: str,
    stage_name: str,
    num_processes: int = 1,
    retries: int = 0,
    overrides: dict | None = None,
) -> dict:
    """One stage of a training run, as its own flow run. Shard sets of the stage that are not there stop
    it before its task starts (a retry would not make them)."""
    stage = select(plan_stages(load_train_config(config_path, overrides=overrides)), stage_name)[0]
    if not is_complete(stage) and (problems := missing_stage_inputs(stage.config)):
        raise ConfigError(f"stage {stage_name}", problems)
    summary = train_stage.with_options(retries=retries)(config_path, stage_name, num_processes, overrides)
    get_run_logger().info(
        "stage %s: %s steps, last loss %s; model in %s",
        stage_name,
        summary["steps"],
        summary["last_loss"],
        summary["output_dir"],
    )
    create_markdown_artifact(
        stage_markdown(summary),
        key=f"train-stage-{artifact_key(stage_name)}",
        description=f"what training stage {stage_name} made",
    )
    return summary


@flow(name="ieiw_train", log_prints=True)
def train(
    config_path: str,
    num_processes: int = 1,
    retries: int = 0,
    stage: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Train the editing model from a training config YAML, every stage in order (or one ``stage``),
    with ``overrides`` (dotted field path -> value) set on the config's fields.

    Returns the last stage's summary with ``stages``, the summaries of all stages run.
    """
    logger = get_run_logger()
    stages = select(plan_stages(load_train_config(config_path, overrides=overrides)), stage)
    progress_id = create_progress_artifact(0.0, key="train-progress", description="share of stages done")
    summaries = []
    for i, s in enumerate(stages):
        logger.info("stage %d/%d: %s", i + 1, len(stages), s.name)
        summaries.append(train_stage_flow(config_path, s.name, num_processes, retries, overrides))
        update_progress_artifact(progress_id, 100.0 * (i + 1) / len(stages))
    last = summaries[-1]
    lines = ["# Training run", "", "| stage | steps | last loss | model |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {s['stage']} | {s['steps']} | {s['last_loss']} | `{s['output_dir']}` |" for s in summaries]
    lines += [
        "",
        f"Final model (diffusers layout): `{last['output_dir']}`",
        "",
        f"## Samples seen per shard set in `{last['stage']}`",
        "",
        mix_table(last["mix"]),
    ]
    create_markdown_artifact("\n".join(lines), key="train-summary", description="what this training run made")
    return {**last, "stages": summaries}
