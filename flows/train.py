"""`ieiw_train`: a thin Prefect flow around :mod:`model.trainer`.

One process (``num_processes`` 1) trains in the flow's own process through
:func:`model.trainer.train`. Several processes (GPUs) run as a subprocess,
``accelerate launch --num_processes N -m model.trainer CONFIG``, because accelerate's workers must
be separate processes. Either way a rerun resumes from the run's last checkpoint (the trainer's
``resume: latest``), so the task's ``retries`` continue a crashed run instead of restarting it.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from model.config import load_train_config
from model.trainer import checkpoint_dirs
from model.trainer import train as run_trainer


def accelerate_command(config_path: str, num_processes: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
            "-m", "model.trainer", config_path]


@task(name="train-model")
def train_model(config_path: str, num_processes: int = 1) -> str:
    """Train (or resume) and return the output folder."""
    config = load_train_config(config_path)
    if num_processes <= 1:
        return str(run_trainer(config))
    subprocess.run(accelerate_command(str(Path(config_path).resolve()), num_processes), check=True)
    return config.output_dir


def run_summary(output_dir: str) -> dict:
    """Steps done, the last logged loss, checkpoints and the loss curve of a finished run."""
    out = Path(output_dir)
    rows = []
    if (out / "loss.csv").exists():
        with open(out / "loss.csv", newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    return {
        "output_dir": output_dir,
        "steps": int(rows[-1]["step"]) if rows else 0,
        "last_loss": float(rows[-1]["loss"]) if rows else None,
        "checkpoints": [str(p) for p in checkpoint_dirs(output_dir)],
        "loss_curve": str(out / "loss.png"),
        "pipeline": str(out / "model_index.json"),
    }


@flow(name="ieiw_train", log_prints=True)
def train(config_path: str, num_processes: int = 1, retries: int = 0) -> dict:
    """Train the editing model from a training config YAML; returns a summary of the run."""
    logger = get_run_logger()
    output_dir = train_model.with_options(retries=retries)(config_path, num_processes)
    summary = run_summary(output_dir)
    logger.info("trained %s steps, last loss %s; model in %s", summary["steps"], summary["last_loss"], output_dir)
    create_markdown_artifact(
        "\n".join([
            "# Training run", "", f"Model (diffusers layout): `{output_dir}`", f"Steps: {summary['steps']}",
            f"Last loss: {summary['last_loss']}", f"Loss curve: `{summary['loss_curve']}`",
            f"TensorBoard: `tensorboard --logdir {Path(output_dir) / 'logs'}`",
        ]),
        key="train-summary", description="what this training run made",
    )
    return summary
