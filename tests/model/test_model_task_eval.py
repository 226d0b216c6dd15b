"""`ieiw evaluate --task`: the trained model edits held-out task samples; answers are read back out."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from ieiw.flows.commands.model import register
from ieiw.pipelines.multitask.demo import demo_multitask_config
from ieiw.pipelines.multitask.stage import iter_multitask_records, multitask_stage
from ieiw.pipelines.sources.demo import materialize_demo_images
from ieiw.storage.commit import commit_batch
from ieiw.storage.schema import Drop


def test_evaluate_task_edits_held_out_samples_and_scores_them(trained_model, tmp_path):
    images = str(tmp_path / "photos")
    materialize_demo_images(images)
    config = demo_multitask_config(images, resolution=64)
    records = [r for r in iter_multitask_records(config) if not isinstance(r, Drop)]
    commit_batch(multitask_stage(records, config), str(tmp_path / "held_out"), "held-out")

    app = typer.Typer()
    register(app)
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--model",
            trained_model,
            "--shards",
            str(tmp_path / "held_out" / "shards"),
            "--task",
            "keypoints",
            "-o",
            str(out),
            "--limit",
            "3",
            "--steps",
            "2",
            "--resolution",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list((out / "edits").glob("*.png"))) == 3
    metrics = json.loads((out / "keypoints_metrics.json").read_text())
    assert metrics["samples"] == 3 and metrics["missing_outputs"] == 0 and 0.0 <= metrics["AP"] <= 1.0
    assert (out / "keypoint_per_sample.csv").exists() and (out / "keypoint_grid.png").exists()
