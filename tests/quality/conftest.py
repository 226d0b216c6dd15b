"""Fixtures of the quality tests: a tiny open_clip model and aesthetic head saved as real
checkpoints are, and a candidate stage written through storage's stage folder, as generators do."""

from __future__ import annotations

import json

import pytest
import torch
from quality_helpers import TINY_CLIP, TINY_CLIP_CONFIG, candidate_samples, write_candidates

from ieiw.quality.aesthetic import AestheticPredictor
from ieiw.quality.embeddings import EmbedderConfig, register_model_config


@pytest.fixture(scope="session")
def clip_files(tmp_path_factory) -> dict[str, str]:
    """A random tiny open_clip model saved as a state dict (``.pt``) and as ``.safetensors``."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("clip")
    config_path = root / f"{TINY_CLIP}.json"
    config_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    register_model_config(str(config_path))
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP)
    state = model.state_dict()
    torch.save(state, root / "tiny-clip.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "tiny-clip.safetensors"))
    return {
        "config": str(config_path),
        "pt": str(root / "tiny-clip.pt"),
        "safetensors": str(root / "tiny-clip.safetensors"),
    }


@pytest.fixture(scope="session")
def embedder_config(clip_files) -> EmbedderConfig:
    return EmbedderConfig(
        model=TINY_CLIP, pretrained=clip_files["pt"], model_config_file=clip_files["config"], batch_size=16
    )


@pytest.fixture(scope="session")
def embedder(embedder_config):
    from ieiw.quality.embeddings import ClipEmbedder

    return ClipEmbedder.from_config(embedder_config)


@pytest.fixture(scope="session")
def aesthetic_checkpoint(tmp_path_factory) -> str:
    """A random aesthetic head saved as the published one is: a plain state dict ``.pth``."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("aesthetic") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(AestheticPredictor().state_dict(), path)
    return str(path)


@pytest.fixture()
def candidates(tmp_path) -> dict:
    """A candidate stage: two committed batches of pairs plus one committed broken shard."""
    stage = tmp_path / "candidates"
    samples = candidate_samples()
    broken = write_candidates(str(stage), {"gen-a": samples[:7], "gen-b": samples[7:]}, broken=samples[5])
    return {"url": str(stage), "samples": samples, "broken": broken, "total": len(samples) + 2}
