"""The curriculum: stage configs, stage chaining, caption pre-training, the mix seen, kill and resume."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
import yaml
from safetensors.torch import load_file
from small_training import small_config
from synthetic_edits import write_synthetic_shards
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from ieiw.flows.commands.model import register
from ieiw.model.build import build_models
from ieiw.model.checkpoints import checkpoint_dirs
from ieiw.model.config import TrainConfig, load_train_config
from ieiw.model.curriculum import DONE_MARKER, StageNotReady, plan_stages, run_curriculum
from ieiw.model.data import SourceSet, StreamSettings, StreamState, make_loader
from ieiw.model.trainer import encode_text, train, training_step

REPO = Path(__file__).resolve().parents[2]
DATA = {"resolution": 24, "num_workers": 0, "shuffle_buffer": 16, "shards_per_block": 2}


def _unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "unet" / "diffusion_pytorch_model.safetensors")


def _curriculum(base, shards: Path, output_dir: Path, task_steps: int = 3, **overrides) -> TrainConfig:
    """Three tiny stages: caption pre-training, a two-set mix, instruction tuning for one epoch."""
    values = {
        "base_model": str(base), "output_dir": str(output_dir), "data": DATA, "train_batch_size": 4,
        "mixed_precision": "no", "checkpoint_every": 4, "log_every": 1,
        "stages": [
            {"name": "pretrain", "text_field": "pretrain_caption", "image_conditioning": False,
             "data": [{"name": "multitask", "urls": [str(shards / "a")]}], "max_steps": 2},
            {"name": "task_mix", "max_steps": task_steps, "learning_rate": 5e-4,
             "data": [{"name": "removal", "urls": [str(shards / "a")], "weight": 2.0},
                      {"name": "web_edits", "urls": [str(shards / "b")], "weight": 1.0}]},
            {"name": "instruction_tuning", "epochs": 1, "learning_rate": 1e-5,
             "data": [{"name": "aligned", "urls": [str(shards / "picks")]}]},
        ],
    }
    values.update(overrides)
    return TrainConfig.model_validate(values)


@pytest.fixture(scope="module")
def stage_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stage-shards")
    write_synthetic_shards(str(root / "a"), 24, 6, seed=3, split="a")
    write_synthetic_shards(str(root / "b"), 12, 4, seed=4, split="b")
    write_synthetic_shards(str(root / "picks"), 8, 4, seed=5, split="picks")  # 8 samples: 2 steps an epoch
    return root


def test_stage_configs_chain_and_override(tiny_base, stage_shards, tmp_path):
    config = _curriculum(tiny_base, stage_shards, tmp_path / "run")
    pretrain, task_mix, tuning = plan_stages(config)
    assert [s.name for s in (pretrain, task_mix, tuning)] == ["pretrain", "task_mix", "instruction_tuning"]
    assert pretrain.config.base_model == str(tiny_base)
    assert task_mix.config.base_model == pretrain.config.output_dir == str(tmp_path / "run" / "pretrain")
    assert tuning.config.base_model == str(tmp_path / "run" / "task_mix")
    assert pretrain.config.data.sets[0].text_field == "pretrain_caption"
    assert not pretrain.config.image_conditioning and task_mix.config.image_conditioning
    assert task_mix.config.data.sets[1].text_field == "instruction"
    assert task_mix.config.optim.learning_rate == 5e-4 and pretrain.config.optim.learning_rate == 1e-4
    assert tuning.config.epochs == 1 and task_mix.config.epochs is None
    assert {s.config.latent_cache_model for s in (pretrain, task_mix, tuning)} == {str(tiny_base)}
    assert all(s.config.stages is None and s.config.data.resolution == 24 for s in (pretrain, tuning))
    # a config without stages is one stage, trained straight into output_dir
    (single,) = plan_stages(small_config(tiny_base, stage_shards / "a", tmp_path / "single"))
    assert single.config.output_dir == str(tmp_path / "single") and not single.staged


@pytest.mark.parametrize("change, message", [
    ({"data": {"sets": [{"urls": ["x"]}]}}, "each stage lists its own data"),
    ({"stages": []}, "stages is empty"),
    ({"resume": "/some/checkpoint"}, "resume must be"),
])
def test_bad_curriculum_configs_are_rejected(tiny_base, stage_shards, tmp_path, change, message):
    values = _curriculum(tiny_base, stage_shards, tmp_path).model_dump()
    values.update(change)
    with pytest.raises(ValueError, match=message):
        TrainConfig.model_validate(values)
    stage = values["stages"][0] if values.get("stages") else None
    if stage is not None:
        with pytest.raises(ValueError, match="not both"):
            TrainConfig.model_validate({**values, "data": {}, "resume": "latest",
                                        "stages": [{**stage, "epochs": 2}]})
        with pytest.raises(ValueError, match="unique"):
            TrainConfig.model_validate({**values, "data": {}, "resume": "latest", "stages": [stage, stage]})


def test_the_example_curriculum_config():
    config = load_train_config(REPO / "configs" / "train_curriculum.yaml")
    stages = plan_stages(config)
    assert [s.name for s in stages] == ["pretrain", "task_mix", "instruction_tuning"]
    assert stages[0].config.data.sets[0].text_field == "pretrain_caption"
    assert not stages[0].config.image_conditioning
    mixed = [s.name for s in stages[1].config.data.sets]
    assert mixed == ["removal", "replacement", "web_edits", "multitask"]
    assert all(Path(u).is_absolute() for s in stages for x in s.config.data.sets for u in x.urls)
    assert stages[2].config.base_model == stages[1].config.output_dir


def test_pretraining_drops_the_image_input(tiny_base, stage_shards, tmp_path):
    """Without image conditioning the source latent is zeros: its UNet input weights get no gradient."""
    config = small_config(tiny_base, stage_shards / "a", tmp_path, image_conditioning=False,
                          cfg_dropout={"text": 0, "image": 0, "both": 0})
    models = build_models(config)
    sets = [SourceSet([str(p) for p in sorted((stage_shards / "a").glob("*.tar"))], 1.0, "pretrain_caption")]
    batch = next(iter(make_loader(sets, StreamSettings(resolution=24, batch_size=4), StreamState(0))))
    assert all(t.startswith("a ") for t in batch["text"])  # "a red circle": the pre-training caption
    loss = training_step(config, models, models.unet, batch, encode_text(models, [""], "cpu"),
                         torch.Generator().manual_seed(0), "cpu")
    loss.backward()
    grad = models.unet.conv_in.weight.grad
    assert grad[:, :4].abs().sum() > 0
    assert grad[:, 4:].abs().sum() == 0  # the source-latent inputs saw only zeros


def share_sd(weights: list[float], per_shard: list[int], samples: int) -> list[float]:
    """Standard deviation of each set's share of ``samples`` drawn shard by shard.

    A shard of set j is drawn with probability q_j ∝ w_j / m_j and yields m_j samples. Set i's share
    is a ratio of sums over the D ≈ samples / E[m] draws; by the delta method its variance is
    Σ_j q_j m_j² (δ_ij - w_i)² / (D E[m]²). With one-sample shards this is the binomial
    w_i (1 - w_i) / samples.
    """
    w = [x / sum(weights) for x in weights]
    q = [wi / m for wi, m in zip(w, per_shard, strict=True)]
    q = [x / sum(q) for x in q]
    mean = sum(qj * m for qj, m in zip(q, per_shard, strict=True))
    draws = samples / mean
    return [math.sqrt(sum(qj * m * m * ((i == j) - w[i]) ** 2 for j, (qj, m) in enumerate(zip(q, per_shard)))
                      / (draws * mean * mean)) for i in range(len(w))]


def test_the_logged_mix_matches_the_weights(tiny_base, tmp_path):
    """Three sets, weights 0.6/0.3/0.1, shards of 4, 2 and 1 samples: the shares seen over 640 samples."""
    names, weights, per_shard = ["big", "medium", "small"], [0.6, 0.3, 0.1], [4, 2, 1]
    sets = []
    for i, (name, weight, size) in enumerate(zip(names, weights, per_shard, strict=True)):
        write_synthetic_shards(str(tmp_path / name), 8 * size, size, seed=10 + i, split=name)
        sets.append({"name": name, "urls": [str(tmp_path / name)], "weight": weight})
    steps, batch = 40, 16
    out = train(small_config(tiny_base, tmp_path, tmp_path / "run", max_steps=steps, train_batch_size=batch,
                             use_ema=False, checkpoint_every=100, log_every=10,
                             data={"sets": sets, "shuffle_buffer": 8}))
    mix = json.loads((out / "mix.json").read_text())
    assert mix["samples"] == steps * batch
    sds = share_sd(weights, per_shard, mix["samples"])
    print("set      weight  share  tolerance (3 sd)")
    for row, sd in zip(mix["sets"], sds, strict=True):
        print(f"{row['name']:8s} {row['weight_share']:.3f}   {row['share']:.3f}  {3 * sd:.3f}")
        assert abs(row["share"] - row["weight_share"]) <= 3 * sd, row
    assert [r["name"] for r in mix["sets"]] == names
    assert (out / "mix.csv").read_text().splitlines()[0] == "name,weight,weight_share,samples,share"
    # drawing shards by weight alone would give shares ∝ w m: far outside the tolerance for two sets
    naive = [w * m / sum(x * y for x, y in zip(weights, per_shard)) for w, m in zip(weights, per_shard)]
    assert sum(abs(n - w) > 3 * sd for n, w, sd in zip(naive, weights, sds)) >= 2
    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("mix/")]
    logged = {tag: events.Scalars(tag)[-1].value for tag in tags}
    assert logged == pytest.approx({f"mix/{r['name']}": r["share"] for r in mix["sets"]})


def _run_killed_in_stage(config: TrainConfig, config_file: Path, stage: str) -> None:
    """Run the curriculum in a subprocess; SIGKILL it once ``stage`` has its first checkpoint."""
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "ieiw.model.trainer", str(config_file)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage_dir = str(Path(config.output_dir) / stage)
    deadline = time.monotonic() + 240
    while not checkpoint_dirs(stage_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_all_stages_then_a_kill_resumes_inside_its_stage(tiny_base, stage_shards, tmp_path, caplog):
    reference = _curriculum(tiny_base, stage_shards, tmp_path / "reference", task_steps=24)
    summaries = run_curriculum(reference)
    assert [(s["stage"], s["steps"], s["skipped"]) for s in summaries] == [
        ("pretrain", 2, False), ("task_mix", 24, False), ("instruction_tuning", 2, False)]  # 1 epoch: 8/4
    ref = Path(reference.output_dir)
    for s in summaries:
        stage_dir = Path(s["output_dir"])
        assert (stage_dir / "model_index.json").exists() and (stage_dir / DONE_MARKER).exists()
        assert s["mix"]["samples"] == s["steps"] * 4
    assert [r["name"] for r in summaries[1]["mix"]["sets"]] == ["removal", "web_edits"]
    # each stage starts from the previous stage's saved model
    task_mix = plan_stages(reference)[1]
    for key, value in build_models(task_mix.config).unet.state_dict().items():
        torch.testing.assert_close(value, _unet(ref / "pretrain")[key], msg=key)

    config = _curriculum(tiny_base, stage_shards, tmp_path / "killed", task_steps=24)
    killed = Path(config.output_dir)
    _run_killed_in_stage(config, tmp_path / "killed.yaml", "task_mix")
    assert (killed / "pretrain" / DONE_MARKER).exists(), "killed before the first stage completed"
    assert checkpoint_dirs(str(killed / "task_mix")), "killed before the second stage's first checkpoint"
    assert not (killed / "task_mix" / DONE_MARKER).exists(), "the second stage finished before the kill"
    marker_time = (killed / "pretrain" / DONE_MARKER).stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="ieiw.model.trainer"):
        resumed = run_curriculum(load_train_config(tmp_path / "killed.yaml"))
    assert [(s["stage"], s["skipped"]) for s in resumed] == [
        ("pretrain", True), ("task_mix", False), ("instruction_tuning", False)]
    assert (killed / "pretrain" / DONE_MARKER).stat().st_mtime_ns == marker_time
    assert any(r.message.startswith("resumed from") and "task_mix/checkpoints/checkpoint-" in r.message
               for r in caplog.records)  # not a restart that happens to give the same weights
    rows = (killed / "task_mix" / "loss.csv").read_text().splitlines()[1:]
    steps = [int(line.split(",")[0]) for line in rows]
    assert steps == list(range(1, 25))
    assert resumed[1]["mix"] == summaries[1]["mix"]  # counts restored from the checkpoint, not restarted
    for stage in ("task_mix", "instruction_tuning"):  # same data order: the very same weights
        a, b = _unet(ref / stage), _unet(killed / stage)
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=f"{stage} {key}")


def test_train_one_stage_from_the_command_line(tiny_base, stage_shards, tmp_path):
    config_file = tmp_path / "curriculum.yaml"
    values = _curriculum(tiny_base, stage_shards, Path("run")).model_dump(mode="json")
    config_file.write_text(yaml.safe_dump(values))  # output_dir relative to the config's folder
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    result = runner.invoke(app, ["train", str(config_file), "--stage", "task_mix", "--no-prefect"])
    assert result.exit_code == 1 and "pretrain" in result.output and "not saved yet" in result.output
    assert not (tmp_path / "run" / "task_mix").exists()
    result = runner.invoke(app, ["train", str(config_file), "--stage", "nope", "--no-prefect"])
    assert result.exit_code == 1 and "no stage 'nope'" in result.output

    result = runner.invoke(app, ["train", str(config_file), "--stage", "pretrain", "--no-prefect"])
    assert result.exit_code == 0, result.output
    assert "Stage pretrain (2 steps)" in result.output
    assert "| multitask | 1.000 | 8 | 1.000 |" in result.output  # the mix seen, in the final summary
    assert (tmp_path / "run" / "pretrain" / DONE_MARKER).exists()
    assert not (tmp_path / "run" / "task_mix").exists()
    result = runner.invoke(app, ["train", str(config_file), "--stage", "pretrain", "--no-prefect"])
    assert "already complete, skipped" in result.output
    with pytest.raises(StageNotReady):
        run_curriculum(load_train_config(config_file), stage="instruction_tuning")


def test_train_flow_runs_each_stage_as_a_subflow(prefect_api, tiny_base, stage_shards, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterName,
    )

    from ieiw.flows.train import train as train_flow

    config = _curriculum(tiny_base, stage_shards, tmp_path / "run", use_ema=False)
    config_file = tmp_path / "curriculum.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    summary = train_flow(str(config_file))
    assert [s["stage"] for s in summary["stages"]] == ["pretrain", "task_mix", "instruction_tuning"]
    assert summary["output_dir"] == str(tmp_path / "run" / "instruction_tuning")
    with get_client(sync_client=True) as client:
        keys = ["train-stage-pretrain", "train-stage-task-mix", "train-stage-instruction-tuning"]
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        mine = [a for a in artifacts if str(tmp_path) in a.data]
        assert sorted(a.key for a in mine) == sorted(keys)
        assert any("| removal | 0.667 |" in a.data for a in mine)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
            any_=["stage-pretrain", "stage-task_mix", "stage-instruction_tuning"])))
        assert {r.name for r in runs} >= {"stage-pretrain", "stage-task_mix", "stage-instruction_tuning"}


def test_a_stage_whose_shards_are_not_made_yet_loads_and_stops_in_one_line_when_it_starts(
    tiny_base, stage_shards, tmp_path, capsys
):
    """The picks of instruction tuning come after the earlier stages are trained: the config loads
    without them, and the stage stops before any work, in one line that names its field (exit 2)."""
    from ieiw.flows.cli import main
    from ieiw.model.curriculum import check_ready
    from ieiw.storage.config import ConfigError

    values = _curriculum(tiny_base, stage_shards, Path("run")).model_dump(mode="json")
    values["stages"][2]["data"][0]["urls"] = ["picks-not-made-yet"]  # relative to the config's folder
    config_file = tmp_path / "curriculum.yaml"
    config_file.write_text(yaml.safe_dump(values))
    plan = plan_stages(load_train_config(config_file))
    check_ready(plan[0], plan)
    missing = f"data.sets[0].urls: no folder {tmp_path / 'picks-not-made-yet'}"
    with pytest.raises(ConfigError, match=r"stage instruction_tuning: data\.sets\[0\]\.urls: no folder"):
        check_ready(plan[2], plan)
    with pytest.raises(SystemExit) as stopped:
        main(["train", str(config_file), "--stage", "instruction_tuning", "--no-prefect"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and f"stage instruction_tuning: {missing}" in error, error
    assert "Traceback" not in error and not (tmp_path / "run").exists()
