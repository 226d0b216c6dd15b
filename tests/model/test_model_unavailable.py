"""A model that is not there is one line, exit 2, for `ieiw train | evaluate | edit | edit-ui | candidates`.

Each command runs through the real entry point (``python -m ieiw.flows.cli``) in its own process, as a
user runs it, with the hub offline (``HF_HUB_OFFLINE=1``) and an empty hub cache: the stock hub id of a
shipped config, open_clip's default CLIP, a mistyped path read as a hub id, a missing folder, a folder that
is no pipeline. The one line on stderr says what was looked for, where, and what to do; no traceback, and
nothing is loaded or written first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, trained_model, edit_shards):
    """A working folder with a trained model in it (``model/``), its shards and an empty hub cache."""
    root = tmp_path_factory.mktemp("user")
    (root / "model").symlink_to(trained_model, target_is_directory=True)
    (root / "shards").symlink_to(edit_shards, target_is_directory=True)
    (root / "runs").mkdir()  # where the trained models of this user live: `runs/<name>`
    return root


CASES = {
    "train: the stock hub id, offline": (
        ["train", str(REPO / "configs" / "train_sd15.yaml")],
        [
            "configs/train_sd15.yaml: base_model: hub model stable-diffusion-v1-5/stable-diffusion-v1-5@main",
            "not in the local hub cache",
            "HF_HUB_OFFLINE is set",
            "hf download stable-diffusion-v1-5/stable-diffusion-v1-5",
            "or give a local path",
            "ieiw tiny-model DIR",
        ],
    ),
    "train: --base, a missing folder": (
        ["train", str(REPO / "configs" / "train_sd15.yaml"), "--base", "./tiny-sd"],
        ["--base ", "/tiny-sd: no such folder (", "/tiny-sd)", "ieiw tiny-model DIR"],  # from here
    ),
    "evaluate: the default CLIP, offline": (
        ["evaluate", "--model", "model", "--shards", "shards", "-o", "eval"],
        [
            "CLIP ViT-L-14 'openai'",
            "hub model timm/vit_large_patch14_clip_224.openai",
            "HF_HUB_OFFLINE is set",
            "hf download timm/vit_large_patch14_clip_224.openai",
            "--clip-pretrained FILE",
        ],
    ),
    "evaluate: a CLIP checkpoint that is not there": (
        ["evaluate", "--model", "model", "--shards", "shards", "-o", "eval", "--clip-pretrained", "clip.pt"],
        ["CLIP weights clip.pt: no such file (", "/clip.pt)", "release tags"],
    ),
    "evaluate: a mistyped model path": (
        ["evaluate", "--model", "./modle", "--shards", "shards", "-o", "eval"],
        ["--model ./modle: no such folder (", "the folder `ieiw train` wrote"],
    ),
    "edit: a path without ./ is read as a hub id": (
        ["edit", "--model", "runs/sd15-ieiw", "--shards", "shards", "-o", "edits"],
        ["--model: no folder ", "/runs/sd15-ieiw, and as a hub model runs/sd15-ieiw@main", "HF_HUB_OFFLINE"],
    ),
    "edit: a folder that is no pipeline": (
        ["edit", "--model", "runs", "--shards", "shards", "-o", "edits"],
        ["--model runs: not a diffusers pipeline folder (no model_index.json)"],
    ),
    "edit-ui: a missing folder": (
        ["edit-ui", "--model", "./gone", "--port", "1"],
        ["--model ./gone: no such folder"],
    ),
    "candidates: a hub id not in the cache": (
        ["candidates", "--model", "someone/ip2p-model", "--shards", "shards", "-o", "cands"],
        ["--model: hub model someone/ip2p-model@main: not in the local hub cache", "hf download someone/"],
    ),
}


def test_a_missing_model_is_one_line_and_exit_2(workdir, tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "empty-hf-home"),  # no model in the hub cache
        "IEIW_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "ieiw.flows.cli", *args],
            cwd=workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, _) in CASES.items()
    }  # at once: each pays the command line's start-up
    for name, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        lines = stderr.strip().splitlines()
        assert process.returncode == 2, f"{name}: {process.returncode}\n{stdout}\n{stderr}"
        assert len(lines) == 1 and lines[0].startswith("ieiw: "), f"{name}:\n{stderr}"
        for expected in CASES[name][1]:
            assert expected in lines[0], f"{name}: {expected!r} not in\n{lines[0]}"
    assert not any((workdir / out).exists() for out in ("eval", "edits", "cands"))  # nothing was made
