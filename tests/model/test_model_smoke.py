"""The README's smoke run, exactly as written, through the command line, on a tiny demo build.

In a folder laid out as a fresh clone (the shipped ``configs/``, the demo's build under
``.ieiw/demo/build``), each command below runs as ``python -m ieiw.flows.cli ...`` in a subprocess with
the hub offline: a tiny base model written offline, a short training run on the demo's removal shards
(as a Prefect flow, the default), edits of the demo's multi-task samples, and an evaluation with a tiny
CLIP. Nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_text import words

REPO = Path(__file__).resolve().parents[2]

# The smoke run of the README (after `ieiw demo`): about a minute on a CPU.
SMOKE = [
    "ieiw tiny-model .ieiw/tiny-sd",
    "ieiw train configs/train_sd15.yaml --base .ieiw/tiny-sd --max-steps 10 --resolution 64 --batch-size 2"
    " --mixed-precision no --num-workers 0 --output-dir .ieiw/train/smoke",
    "ieiw edit --model .ieiw/train/smoke --shards .ieiw/demo/build/multitask --limit 4 --steps 4"
    " --resolution 64 -o .ieiw/edits/smoke",
]
# ... and the CLIP metrics of those edits with a tiny CLIP, offline.
SMOKE_EVALUATE = [
    "ieiw tiny-model .ieiw/tiny-clip --clip",
    "ieiw evaluate --model .ieiw/train/smoke --shards .ieiw/demo/build/removal --limit 4 --steps 4"
    " --resolution 64 -o .ieiw/eval/smoke --clip-model ieiw-tiny-clip"
    " --clip-config-file .ieiw/tiny-clip/ieiw-tiny-clip.json"
    " --clip-pretrained .ieiw/tiny-clip/ieiw-tiny-clip.safetensors",
]


def build_tiny_demo(clone: Path) -> None:
    """What `ieiw demo` writes into ``clone/.ieiw/demo/build``: its removal and multi-task stages, through
    the same stages and runner (without the Prefect server and the gallery)."""
    from ieiw.flows.config import load_demo_config
    from ieiw.flows.stages import build_stages
    from ieiw.storage.runner import RunOptions, ThreadExecutor, run_stage

    config = load_demo_config(clone / ".ieiw" / "demo")
    with ThreadExecutor(2) as executor:
        for stage in build_stages(config):
            summary = run_stage(stage, executor, RunOptions())
            assert summary.kept > 0, summary.outcome()


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A folder laid out as a fresh clone after `ieiw demo`: the shipped configs and the demo's build."""
    root = tmp_path_factory.mktemp("clone")
    shutil.copytree(REPO / "configs", root / "configs")
    build_tiny_demo(root)
    assert {p.name for p in (root / ".ieiw" / "demo" / "build").iterdir()} >= {"removal", "multitask"}
    return root


def run(command: str, cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """One README command (``ieiw ...``) as ``python -m ieiw.flows.cli ...``; returns it and its time."""
    args = shlex.split(command)
    assert args[0] == "ieiw"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "ieiw.flows.cli", *args[1:]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    return done, time.perf_counter() - started


@pytest.mark.slow
def test_the_readme_smoke_run_trains_edits_and_evaluates_offline(clone, prefect_api):
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "HF_HUB_OFFLINE": "1",
        "IEIW_CACHE": str(clone / ".cache"),
        "OMP_NUM_THREADS": "1",  # a shared CI machine: one thread per process is faster for tiny models
    }
    env.pop("IEIW_SHARDS", None)  # the configs' default: the demo's build
    times = {}
    for command in SMOKE + SMOKE_EVALUATE:
        done, seconds = run(command, clone, env)
        times[" ".join(shlex.split(command)[1:3])] = round(seconds, 1)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert "initialized randomly" not in done.stderr, done.stderr  # the CLIP's weights did load
    print("smoke run, seconds per command:", times)

    model = clone / ".ieiw" / "train" / "smoke"
    assert (model / "model_index.json").is_file() and (clone / ".ieiw" / "tiny-sd" / "unet").is_dir()
    steps = (model / "loss.csv").read_text().splitlines()[1:]
    assert len(steps) == 10
    config = yaml.safe_load((model / "train_config.yaml").read_text())  # what the run was given
    assert config["data"]["resolution"] == 64 and config["train_batch_size"] == 2
    assert config["base_model"] == str(clone / ".ieiw" / "tiny-sd")
    assert config["data"]["sets"][0]["urls"] == [str(clone / ".ieiw" / "demo" / "build" / "removal")]

    edits = clone / ".ieiw" / "edits" / "smoke"
    index = [json.loads(line) for line in (edits / "index.jsonl").read_text().splitlines()]
    assert len(index) == 4 and len(list(edits.glob("*.png"))) == 4
    assert all((edits / row["edit"]).is_file() and "/multitask/" in row["shard"] for row in index)
    assert (edits / "index.html").is_file()

    summary = json.loads((clone / ".ieiw" / "eval" / "smoke" / "summary.json").read_text())
    assert summary["samples"] == 4 and summary["clip_image"]["count"] == 4
    assert summary["clip_text"] == {"mean": None, "count": 0} and "clip_text" in summary["notes"]
    assert "no caption" in words(summary["notes"]["clip_text"])
