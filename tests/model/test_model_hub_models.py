"""Hub ids in `ieiw train` and `ieiw edit` are pinned to a commit up front and loaded at exactly it.

A local server speaks the hub's HTTP API (``HF_ENDPOINT``) and serves a tiny SD-1.5-shaped base, as a
user's first download would fetch one: `ieiw train --base tiny/sd15` records ``tiny/sd15@<commit>`` and
trains from that commit's weights even after the branch moved on, and `ieiw edit` opens a trained model
named by its hub id online, then offline from the cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from hub_server import HubServer
from safetensors.torch import load_file

from ieiw.model.tiny import save_tiny_sd


def cli(*args, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "ieiw.flows.cli", *[str(a) for a in args]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_hub_models_are_pinned_and_loaded_at_their_commit(edit_shards, trained_model, tmp_path):
    first_seed, second_seed = 3, 4
    first = save_tiny_sd(tmp_path / "first", seed=first_seed)
    second = save_tiny_sd(tmp_path / "second", seed=second_seed)
    config = tmp_path / "train.yaml"
    data = {"sets": [{"urls": [str(edit_shards)]}], "resolution": 24, "num_workers": 0}
    config.write_text(yaml.safe_dump({"base_model": "x/y", "output_dir": "run", "data": data}))
    with HubServer() as hub:
        commit = hub.commit("tiny/sd15", first)
        hub.commit("tiny/sd15", second)  # main has moved on since `commit`
        hub.commit("tiny/ip2p", trained_model)
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(tmp_path / "hf-home"),  # a new machine: nothing cached
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "IEIW_CACHE": str(tmp_path / "ieiw-cache"),
            "OMP_NUM_THREADS": "1",
        }
        options = ["--max-steps", "1", "--batch-size", "2", "--mixed-precision", "no", "--no-prefect"]
        cli("train", config, "--base", f"tiny/sd15@{commit}", *options, cwd=tmp_path, env=env)

        out, again = tmp_path / "edits", tmp_path / "again"
        edit = ["edit", "--model", "tiny/ip2p", "--shards", edit_shards, "--limit", "1", "--steps", "1"]
        cli(*edit, "--resolution", "32", "--device", "cpu", "-o", out, cwd=tmp_path, env=env)
        offline = {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # from the cache now
        cli(*edit, "--resolution", "32", "--device", "cpu", "-o", again, cwd=tmp_path, env=offline)

    trained = yaml.safe_load((tmp_path / "run" / "train_config.yaml").read_text())
    assert trained["base_model"] == f"tiny/sd15@{commit}"
    encoder = "text_encoder/model.safetensors"  # frozen in training: the pinned commit's, not main's
    seeds = f"seeds {first_seed}, {second_seed}"
    assert _same(load_file(tmp_path / "run" / encoder), load_file(first / encoder)), seeds
    assert not _same(load_file(second / encoder), load_file(first / encoder)), seeds
    pinned = json.loads((out / "index.jsonl").read_text().splitlines()[0])["settings"]["model"]
    assert pinned.startswith("tiny/ip2p@") and len(pinned.split("@")[1]) == 40  # the commit it loaded
    assert [p.read_bytes() for p in sorted(out.glob("*.png"))] == [
        p.read_bytes() for p in sorted(again.glob("*.png"))
    ]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
