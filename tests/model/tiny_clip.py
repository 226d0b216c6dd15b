"""A tiny open_clip model (JSON config + safetensors weights) for the evaluation tests.

Loaded through :class:`ieiw.quality.embeddings.ClipEmbedder.from_config`, the loader a user runs with
real CLIP weights; the tokenizer is open_clip's own BPE vocabulary, shipped with the package.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

NAME = "ieiw-model-tests-tiny-clip"
CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_tiny_clip(directory: Path, seed: int = 0) -> tuple[str, str, str]:
    """Write the config and random weights; returns (model name, config file, weights file)."""
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / f"{NAME}.json"
    config_file.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(config_file)
    torch.manual_seed(seed)
    model = open_clip.create_model(NAME)
    weights = directory / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return NAME, str(config_file), str(weights)
