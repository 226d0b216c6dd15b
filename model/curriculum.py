"""The training curriculum: a config's ``stages`` trained in order, each from the previous one's model.

The paper trains in three stages: caption pre-training (text-to-image on the target, the image
input dropped), task-specific training on the weighted mix, and instruction tuning on human-picked
edits. Here a stage is a plain single-stage :class:`~model.config.TrainConfig` (built by
:func:`stage_config`) run by :func:`ieiw.model.trainer.train` into ``<output_dir>/<stage name>/``, with
``base_model`` set to the previous stage's saved pipeline (diffusers layout).

A stage is complete when its marker file (written after its final save) is there; a rerun skips
complete stages and the trainer resumes an interrupted one from its last checkpoint with the same
data order. A config without ``stages`` is one stage trained straight into ``output_dir``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from ieiw.model.checkpoints import checkpoint_dirs
from ieiw.model.config import StageConfig, TrainConfig, missing_stage_inputs
from ieiw.model.reports import write_json
from ieiw.model.trainer import train
from ieiw.storage.config import ConfigError

log = logging.getLogger(__name__)

DONE_MARKER = "stage_complete.json"
SINGLE_STAGE = "train"  # the name of the one stage of a config without stages


class StageNotReady(FileNotFoundError):
    """A stage was asked for whose previous stage has not saved its model yet."""


@dataclass
class Stage:
    """One stage of a run, resolved: its name, place, single-stage config and predecessor's name."""

    name: str
    index: int
    config: TrainConfig
    previous: str | None = None
    staged: bool = True  # false: a config without stages (no marker, no skipping)

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


def stage_config(config: TrainConfig, stage: StageConfig, base_model: str) -> TrainConfig:
    """The single-stage config of ``stage``: the run's settings with the stage's data and overrides."""
    sets = [
        s.model_copy(update={"text_field": s.text_field or stage.text_field or "instruction"})
        for s in stage.data
    ]
    values = config.model_dump(exclude={"stages"})
    values.update(
        base_model=base_model,
        output_dir=str(Path(config.output_dir) / stage.name),
        image_conditioning=stage.image_conditioning,
        latent_cache_model=config.latent_cache_model or config.base_model,
    )
    values["data"]["sets"] = [s.model_dump() for s in sets]
    for name in ("learning_rate", "lr_warmup_steps"):
        if getattr(stage, name) is not None:
            values["optim"][name] = getattr(stage, name)
    for name in ("train_batch_size", "checkpoint_every", "objective", "beta"):
        if getattr(stage, name) is not None:
            values[name] = getattr(stage, name)
    if stage.cfg_dropout is not None:
        values["cfg_dropout"] = stage.cfg_dropout.model_dump()
    if stage.max_steps is not None:
        values.update(max_steps=stage.max_steps, epochs=None)
    elif stage.epochs is not None:
        values["epochs"] = stage.epochs
    if values["epochs"] is not None:
        values.pop("max_steps")
    return TrainConfig.model_validate(values)


def plan_stages(config: TrainConfig) -> list[Stage]:
    """The run's stages in order, each chained to the previous stage's output folder."""
    if config.stages is None:
        return [Stage(SINGLE_STAGE, 0, config, staged=False)]
    stages: list[Stage] = []
    base, previous = config.base_model, None
    for index, stage in enumerate(config.stages):
        resolved = stage_config(config, stage, base)
        stages.append(Stage(stage.name, index, resolved, previous))
        base, previous = resolved.output_dir, stage.name
    return stages


def is_complete(stage: Stage) -> bool:
    return (stage.output_dir / DONE_MARKER).exists()


def settings_fingerprint(stage: Stage) -> str:
    """What a stage was trained with (a previous stage's folder left out: it moves with output_dir; an
    edit stage's preference settings left out: they do not shape it)."""
    left_out = {"output_dir", "resume"} | ({"base_model"} if stage.previous else set())
    if stage.config.objective == "edit":
        left_out |= {"objective", "beta"}
    values = stage.config.model_dump(mode="json", exclude=left_out)
    for shard_set in values["data"]["sets"]:
        if shard_set.get("choosers") is None:
            shard_set.pop("choosers", None)  # every pair: what a stage read before sets could filter
    dumped = json.dumps(values, sort_keys=True)
    return hashlib.sha256(dumped.encode()).hexdigest()[:16]


def check_ready(stage: Stage, plan: list[Stage]) -> None:
    """Raise :class:`StageNotReady` unless the stage's previous stage (if any) is complete, and a
    :class:`~ieiw.storage.config.ConfigError` when a shard set of the stage is not there."""
    problems = missing_stage_inputs(stage.config)
    if problems:
        raise ConfigError(f"stage {stage.name}", problems)
    if stage.previous is None:
        return
    before = next(s for s in plan if s.name == stage.previous)
    if not is_complete(before):
        raise StageNotReady(
            f"stage {stage.name!r} starts from stage {before.name!r}'s model, which is not saved yet "
            f"(no {before.output_dir / DONE_MARKER}): train {before.name!r} first, or run all stages"
        )


def run_stage(stage: Stage, plan: list[Stage]) -> dict:
    """Train one stage (or skip it when complete); returns its summary.

    Raises :class:`StageNotReady` when the stage starts from a previous stage that is not complete.
    """
    if stage.staged and is_complete(stage):
        marker = json.loads((stage.output_dir / DONE_MARKER).read_text())
        if marker.get("settings") != settings_fingerprint(stage):
            log.warning(
                "stage %r was completed with other settings; delete %s to train it again",
                stage.name,
                stage.output_dir,
            )
        log.info("stage %r is complete (%s): skipped", stage.name, stage.output_dir / DONE_MARKER)
        return {**run_summary(str(stage.output_dir)), "stage": stage.name, "skipped": True}
    check_ready(stage, plan)
    log.info("stage %d/%d %r from %s", stage.index + 1, len(plan), stage.name, stage.config.base_model)
    started = time.time()
    out = train(stage.config, keep_process_group=True)
    state = PartialState()
    summary = {**run_summary(str(out)), "stage": stage.name, "skipped": False}
    if stage.staged and state.is_main_process:
        marker = {
            "stage": stage.name,
            "steps": summary["steps"],
            "base_model": stage.config.base_model,
            "settings": settings_fingerprint(stage),
            "seconds_this_run": round(time.time() - started, 1),
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "mix": summary["mix"],
        }
        tmp = stage.output_dir / f".{DONE_MARKER}.tmp"
        write_json(tmp, marker)
        tmp.replace(stage.output_dir / DONE_MARKER)
    state.wait_for_everyone()
    return summary


def select(plan: list[Stage], name: str | None) -> list[Stage]:
    if name is None:
        return plan
    found = [s for s in plan if s.name == name]
    if not found:
        raise ValueError(f"no stage {name!r} in this config; its stages: {[s.name for s in plan]}")
    return found


def run_curriculum(config: TrainConfig, stage: str | None = None) -> list[dict]:
    """Run every stage in order (or only ``stage``); returns one summary per stage run or skipped."""
    plan = plan_stages(config)
    try:
        return [run_stage(s, plan) for s in select(plan, stage)]
    finally:
        end_process_group()


def end_process_group() -> None:
    """End the group of training processes (under `accelerate launch`), which the stages shared."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def run_summary(output_dir: str) -> dict:
    """Steps done, the last logged loss (and the objective's other figures), the data mix seen, checkpoints
    and the loss curve of a run."""
    out = Path(output_dir)
    rows = []
    if (out / "loss.csv").exists():
        with open(out / "loss.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    mix = json.loads((out / "mix.json").read_text()) if (out / "mix.json").exists() else None
    last = {k: float(v) for k, v in rows[-1].items() if k not in ("step", "loss") and v} if rows else {}
    return {
        "output_dir": output_dir,
        "steps": int(rows[-1]["step"]) if rows else 0,
        "last_loss": float(rows[-1]["loss"]) if rows else None,
        "last_figures": last,  # what else the objective logs (a preference stage: accuracy, margin...)
        "mix": mix,
        "checkpoints": [str(p) for p in checkpoint_dirs(output_dir)],
        "loss_curve": str(out / "loss.png"),
        "pipeline": str(out / "model_index.json"),
    }


def figures_line(summary: dict) -> str:
    """The last logged figures besides the loss (a preference stage's implicit accuracy, reward margin and
    errors), in one line; empty when the objective logs none."""
    figures = summary.get("last_figures") or {}
    return ", ".join(f"{name.replace('_', ' ')} {value:.4g}" for name, value in figures.items())


def mix_table(mix: dict | None) -> str:
    """The samples seen per set against the weights, as a Markdown table."""
    if not mix:
        return "(no mix logged)"
    lines = ["| set | weight share | samples | share seen |", "| --- | ---: | ---: | ---: |"]
    lines += [
        f"| {r['name']} | {r['weight_share']:.3f} | {r['samples']} | {r['share']:.3f} |" for r in mix["sets"]
    ]
    return "\n".join(lines)
