"""Two training processes (DDP over gloo on the CPU, as `accelerate` runs many GPUs): per-rank data
positions in the checkpoints, and a resume that continues exactly."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from small_training import small_config

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config_file: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "ieiw.model.trainer",
               str(config_file)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_checkpoint_and_resume(tiny_base, edit_shards, tmp_path):
    out = tmp_path / "run"
    config = small_config(tiny_base, edit_shards, out, max_steps=6, checkpoint_every=3,
                          data={"num_workers": 1})
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    _launch(config_file)
    checkpoint = out / "checkpoints" / "checkpoint-0000003"
    ranks = sorted(p.name for p in checkpoint.glob("data-rank*.json"))
    assert ranks == ["data-rank0.json", "data-rank1.json"]
    straight = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")

    shutil.rmtree(out / "checkpoints" / "checkpoint-0000006")  # as if killed after step 3's checkpoint
    shutil.rmtree(out / "unet")
    _launch(config_file)
    resumed = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], msg=key)


def test_two_training_processes_fill_one_latent_cache(tiny_base, edit_shards, tmp_path):
    """The trainer's own cache pass under two processes: both encode, rank 0's lease covers them."""
    from ieiw.model.latent_cache import CACHE_SCHEMA, cache_fingerprint, cache_folder
    from ieiw.storage import manifest
    from ieiw.storage.stage_folder import read_record

    cache = tmp_path / "cache"
    config = small_config(tiny_base, edit_shards, tmp_path / "run", max_steps=1, checkpoint_every=1,
                          data={"latent_cache": str(cache)})
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    _launch(config_file)
    folder = cache_folder(str(cache), cache_fingerprint(str(tiny_base), 24))
    parts = manifest.read_table(folder, schema=CACHE_SCHEMA).to_pylist()
    assert sorted(p["rank"] for p in parts) == [0, 0, 1, 1] and sum(p["samples"] for p in parts) == 48
    assert read_record(folder)["runs"][-1]["extra"]["ranks"] == 2
    assert (tmp_path / "run" / "model_index.json").exists()
