"""`ieiw train`'s overrides (--max-steps, --base, --resolution ...) and the shipped training configs.

Overrides are set on the config's fields before they are validated, so a bad one is one line naming the
option; they reach every stage of a curriculum and every process `accelerate launch` starts. Every
shipped `configs/train_*.yaml` loads through the one config loader, and reads the demo's build unless
$IEIW_SHARDS names another.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ieiw.model.config import load_train_config, train_overrides
from ieiw.model.curriculum import plan_stages

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("train_*.yaml"))


def cli_main(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``ieiw ARGS`` as a user runs it: the real entry point in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "ieiw.flows.cli", *[str(a) for a in args]],
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=400,
    )


def test_every_shipped_train_config_loads_and_reads_the_demo_build_by_default(monkeypatch, tmp_path):
    assert {c.name for c in CONFIGS} >= {"train_sd15.yaml", "train_curriculum.yaml", "train_sdxl.yaml"}
    monkeypatch.delenv("IEIW_SHARDS", raising=False)
    demo = REPO / ".ieiw" / "demo" / "build"
    for path in CONFIGS:
        config = load_train_config(path, check_inputs=False)  # the shards are not built here
        sets = config.data.sets or [s for stage in config.stages for s in stage.data]
        if config.objective == "preference":  # its pairs come from the review loop, not from a build
            assert all(Path(u).parent.name == "review" for s in sets for u in s.urls), path.name
            continue
        urls = [Path(u) for s in sets for u in s.urls if "review" not in u]
        assert urls and all(u.parent == demo for u in urls), (path.name, urls)
        assert {u.name for u in urls} <= {"removal", "replacement", "web_edits", "multitask"}
    monkeypatch.setenv("IEIW_SHARDS", str(tmp_path / "final"))  # a real build's filtered shards
    config = load_train_config(REPO / "configs" / "train_curriculum.yaml", check_inputs=False)
    assert config.stages[0].data[0].urls == [str(tmp_path / "final" / "multitask")]


def test_the_demo_configs_load_with_their_inputs_checked_once_the_demo_is_built(monkeypatch, tmp_path):
    """Where the data is there, nothing is skipped: the base model and shard sets are checked."""
    for name in ("removal", "multitask"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("IEIW_SHARDS", str(tmp_path))
    for name in ("train_sd15.yaml", "train_sdxl.yaml", "train_curriculum.yaml"):
        load_train_config(REPO / "configs" / name)


def test_overrides_apply_to_the_run_and_every_stage_and_paths_are_the_callers(tmp_path):
    (tmp_path / "tiny").mkdir()
    overrides = train_overrides(
        cwd=tmp_path,
        base="tiny",
        output_dir="runs/smoke",
        max_steps=3,
        batch_size=2,
        resolution=64,
        mixed_precision="no",
        num_workers=0,
    )
    assert overrides == {
        "base_model": str(tmp_path / "tiny"),
        "output_dir": str(tmp_path / "runs" / "smoke"),
        "max_steps": 3,
        "train_batch_size": 2,
        "data.resolution": 64,
        "mixed_precision": "no",
        "data.num_workers": 0,
    }
    config = load_train_config(REPO / "configs" / "train_curriculum.yaml", False, overrides)
    assert (config.base_model, config.output_dir) == (str(tmp_path / "tiny"), str(tmp_path / "runs/smoke"))
    assert (config.data.resolution, config.data.num_workers, config.mixed_precision) == (64, 0, "no")
    stages = plan_stages(config)
    assert [(s.config.max_steps, s.config.epochs, s.config.train_batch_size) for s in stages] == [
        (3, None, 2)
    ] * 3  # the instruction-tuning stage's epochs too
    assert stages[1].output_dir == tmp_path / "runs" / "smoke" / "task_mix"
    hub = train_overrides(cwd=tmp_path, base="stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert hub == {"base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5"}  # not a path here


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--max-steps", "0", "max_steps: Input should be greater than 0 (got 0) (from --max-steps 0)"),
        ("--mixed-precision", "fp8", "mixed_precision: Input should be 'no', 'fp16' or 'bf16' (got 'fp8')"),
        ("--base", "./no-such-model", "no such folder"),
    ],
)
def test_a_bad_override_is_one_line_naming_it_and_exit_2(
    tiny_base, edit_shards, tmp_path, option, value, expected
):
    config = tmp_path / "train.yaml"
    data = {"sets": [{"urls": [str(edit_shards)]}]}
    config.write_text(yaml.safe_dump({"base_model": str(tiny_base), "output_dir": "run", "data": data}))
    done = cli_main("train", config, "--no-prefect", option, value, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_overrides_reach_the_processes_accelerate_launches(tiny_base, edit_shards, tmp_path):
    """`--num-processes 2` runs `accelerate launch -m ieiw.model.trainer`: the overrides go with it."""
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "base_model": str(tiny_base),
                "output_dir": "from-the-file",
                "data": {"sets": [{"urls": [str(edit_shards)]}], "resolution": 24, "num_workers": 2},
                "max_steps": 500,
                "use_ema": False,
            }
        )
    )
    done = cli_main(
        "train", config, "--no-prefect", "--num-processes", "2", "--max-steps", "2", "--batch-size", "2",
        "--mixed-precision", "no", "--num-workers", "0", "--output-dir", "run",
        cwd=tmp_path, env={"ACCELERATE_USE_CPU": "true"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(2 steps)" in done.stdout and not (tmp_path / "from-the-file").exists()
    trained = yaml.safe_load((tmp_path / "run" / "train_config.yaml").read_text())
    assert (trained["max_steps"], trained["train_batch_size"], trained["data"]["num_workers"]) == (2, 2, 0)


def test_train_help_lists_the_overrides():
    from ieiw.flows.cli import app

    shown = " ".join(CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output.split())
    for option in ("--max-steps", "--resolution", "--base", "--batch-size", "--mixed-precision",
                   "--output-dir", "--num-workers", "tiny-model"):  # fmt: skip
        assert option in shown, option
