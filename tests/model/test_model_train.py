"""Training: one step, CFG dropout, checkpoints, resume (also after a kill), the saved pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from small_training import small_config

from ieiw.model.build import build_models
from ieiw.model.checkpoints import checkpoint_dirs
from ieiw.model.config import CFGDropout, load_train_config
from ieiw.model.data import SourceSet, StreamSettings, StreamState, make_loader
from ieiw.model.inference import EditSettings, edit_image, load_edit_pipeline
from ieiw.model.latent_cache import build_latent_cache, cache_fingerprint
from ieiw.model.step import cfg_masks
from ieiw.model.trainer import encode_text, train, training_step
from ieiw.storage.stage_folder import read_record

REPO = Path(__file__).resolve().parents[2]


def _unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_one_training_step_trains_the_source_channels(tiny_base, edit_shards, tmp_path):
    config = small_config(tiny_base, edit_shards, tmp_path, cfg_dropout={"text": 0, "image": 0, "both": 0})
    models = build_models(config)
    sets = [SourceSet([str(p) for p in sorted(edit_shards.glob("*.tar"))])]
    batch = next(iter(make_loader(sets, StreamSettings(resolution=24, batch_size=4), StreamState(0))))
    null_text = encode_text(models, [""], "cpu")
    generator = torch.Generator().manual_seed(0)
    loss = training_step(config, models, models.unet, batch, null_text, generator, "cpu")
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grad = models.unet.conv_in.weight.grad
    assert grad[:, 4:].abs().sum() > 0  # the zero-initialised source-latent inputs learn
    assert all(p.grad is None for p in models.vae.parameters())


@pytest.mark.parametrize(
    ("dropout", "text_dropped", "image_dropped"),
    [
        ({"text": 0, "image": 0, "both": 0}, False, False),
        ({"text": 1, "image": 0, "both": 0}, True, False),
        ({"text": 0, "image": 1, "both": 0}, False, True),
        ({"text": 0, "image": 0, "both": 1}, True, True),
    ],
)
def test_a_training_step_applies_the_cfg_dropout(tiny_base, edit_shards, tmp_path, dropout, text_dropped,
                                                 image_dropped):
    """What the UNet is given in a step: the null text where the text is dropped, zero source-latent
    channels where the image is dropped, the real conditioning otherwise."""
    config = small_config(tiny_base, edit_shards, tmp_path, cfg_dropout=dropout)
    models = build_models(config)
    sets = [SourceSet([str(p) for p in sorted(edit_shards.glob("*.tar"))])]
    batch = next(iter(make_loader(sets, StreamSettings(resolution=24, batch_size=4), StreamState(0))))
    null_text = encode_text(models, [""], "cpu")
    seen = {}

    def recording_unet(model_input, timesteps, text, return_dict=False):
        seen["input"], seen["text"] = model_input.detach(), text.detach()
        return models.unet(model_input, timesteps, text, return_dict=return_dict)

    training_step(config, models, recording_unet, batch, null_text, torch.Generator().manual_seed(0), "cpu")
    source_channels = seen["input"][:, 4:]
    per_sample_source = source_channels.abs().flatten(1).sum(1)
    assert bool((per_sample_source == 0).all()) is image_dropped
    assert bool((per_sample_source > 0).all()) is not image_dropped
    is_null = [torch.equal(row, null_text[0].float()) for row in seen["text"]]
    assert all(is_null) if text_dropped else not any(is_null)


def test_cfg_dropout_rates():
    config = small_config("base", "shards", "out", cfg_dropout={"text": 0.1, "image": 0.2, "both": 0.3})
    drop_text, drop_image = cfg_masks(config, 200_000, torch.Generator().manual_seed(0), "cpu")
    assert drop_text.float().mean().item() == pytest.approx(0.4, abs=0.01)  # text only + both
    assert drop_image.float().mean().item() == pytest.approx(0.5, abs=0.01)  # image only + both
    assert (drop_text & drop_image).float().mean().item() == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ValueError):
        CFGDropout(text=0.5, image=0.5, both=0.1)


def test_resume_continues_exactly_and_saves_a_pipeline(tiny_base, edit_shards, tmp_path):
    kwargs = {"data": {"num_workers": 2}, "checkpoint_every": 3, "keep_checkpoints": 2}
    straight = train(small_config(tiny_base, edit_shards, tmp_path / "straight", max_steps=8, **kwargs))
    train(small_config(tiny_base, edit_shards, tmp_path / "split", max_steps=5, **kwargs))
    split = train(small_config(tiny_base, edit_shards, tmp_path / "split", max_steps=8, **kwargs))
    a, b = _unet(straight), _unet(split)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert [p.name for p in checkpoint_dirs(str(split))] == ["checkpoint-0000006", "checkpoint-0000008"]
    steps = [int(line.split(",")[0]) for line in (split / "loss.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 9))
    assert (split / "loss.png").stat().st_size > 0
    assert list((split / "logs").rglob("events.out.tfevents.*"))
    assert json.loads((split / "data_drops.json").read_text()) == {}
    # the diffusers layout opens without conversion, with an 8-channel UNet and the EMA weights
    pipe = load_edit_pipeline(str(split), device="cpu")
    assert pipe.unet.config.in_channels == 8
    image = np.full((32, 32, 3), 120, np.uint8)
    edited = edit_image(pipe, image, "make the circle red", EditSettings(steps=2, resolution=32))
    assert edited.shape == (32, 32, 3)


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_base, edit_shards, tmp_path):
    overrides = {"max_steps": 24, "checkpoint_every": 4}
    reference = train(small_config(tiny_base, edit_shards, tmp_path / "reference", **overrides))
    config = small_config(tiny_base, edit_shards, tmp_path / "killed", **overrides)
    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "ieiw.model.trainer", str(config_file)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not checkpoint_dirs(config.output_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint_dirs(config.output_dir), "the run was killed before its first checkpoint"
    assert not (tmp_path / "killed" / "model_index.json").exists(), "the run finished before the kill"
    resumed = train(load_train_config(config_file))
    a, b = _unet(reference), _unet(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_latent_cache_pass_and_training_from_it(tiny_base, edit_shards, tmp_path):
    models = build_models(small_config(tiny_base, edit_shards, tmp_path))
    fingerprint = cache_fingerprint(str(tiny_base), 24)
    first = build_latent_cache(models.vae, [str(edit_shards)], str(tmp_path / "cache"), fingerprint)
    urls = first.urls([str(edit_shards)])
    assert first.counts == {"cached": 48, "shards_cached": 4} and len(urls) == 4
    again = build_latent_cache(models.vae, [str(edit_shards)], str(tmp_path / "cache"), fingerprint)
    assert again.urls([str(edit_shards)]) == urls and again.counts == {"shards_reused": 4}
    loader = make_loader([SourceSet(urls)], StreamSettings(resolution=24, batch_size=4), StreamState(0))
    batch = next(iter(loader))
    assert batch["src_lat"].shape == batch["tgt_lat"].shape == (4, 4, 12, 12)
    assert "src" not in batch
    out = train(small_config(tiny_base, edit_shards, tmp_path / "run", max_steps=2,
                             data={"latent_cache": str(tmp_path / "cache")}))
    assert (out / "model_index.json").exists()
    # training used the cache it found: nothing was encoded again
    assert read_record(first.folder)["runs"][-1]["extra"]["shards_reused"] == 4


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("train_*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(path):
    config = load_train_config(path, check_inputs=False)  # their shards are made by a build first
    assert Path(config.output_dir).is_absolute()
    assert all(Path(u).is_absolute() for s in config.data.sets for u in s.urls)
    hub_ids = ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-xl-base-1.0")
    if config.objective == "preference":  # it starts from an editing model trained here
        assert Path(config.base_model).is_absolute()
    else:
        assert config.base_model in hub_ids  # a hub id stays one
