"""Fixtures of the model tests: a tiny base checkpoint, synthetic editing shards, a trained model."""

from __future__ import annotations

import pytest
import torch
from preference_data import write_preference_stage
from small_training import small_config
from synthetic_edits import write_synthetic_shards
from tiny_clip import save_tiny_clip
from tiny_diffusion import save_tiny_base


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine run far faster on one thread than on two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A tiny text-to-image checkpoint (4-channel UNet) in Stable Diffusion 1.5's diffusers layout."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def edit_shards(tmp_path_factory):
    """A folder of synthetic recolouring shards: 48 samples, 12 per shard, 32x32."""
    folder = tmp_path_factory.mktemp("edits") / "shards"
    write_synthetic_shards(str(folder), count=48, per_shard=12, seed=1)
    return folder


@pytest.fixture(scope="session")
def trained_model(tiny_base, edit_shards, tmp_path_factory):
    """A model folder written by the trainer (4 steps): what `ieiw edit` and `evaluate` open."""
    from ieiw.model.trainer import train

    torch.set_num_threads(1)
    return train(small_config(tiny_base, edit_shards, tmp_path_factory.mktemp("trained")))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """(model name, config file, weights file) of a tiny open_clip model."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def preferences(tmp_path_factory):
    """A committed preference stage (16 pairs of the recolouring task, 4 per shard; a fourth of the
    sources scored by a reward model, the rest by a judge) and the same pairs in the Diffusion-DPO Hugging
    Face layout."""
    root = tmp_path_factory.mktemp("preferences")
    write_preference_stage(
        str(root / "candidates"), str(root / "stage"), hf_dir=str(root / "hf"), reward_model_every=4
    )
    return {"stage": root / "stage", "hf": root / "hf"}
