"""The training config: one YAML file says what to train from, on which shards, and how.

The data section is a list of shard sets, each with a sampling weight and the metadata field its
text comes from (``instruction`` or ``pretrain_caption``), so the curriculum's stages (caption
pre-training, the weighted task mix, instruction tuning) are each one config of this shape.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

TextField = Literal["instruction", "pretrain_caption"]


class ShardSet(BaseModel):
    """Shards (files or folders of ``*.tar``) sampled with probability proportional to ``weight``."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str]
    weight: float = Field(default=1.0, gt=0)
    text_field: TextField = "instruction"
    name: str = ""


class DataConfig(BaseModel):
    """How shards become batches: sampling, shuffling, workers, crop and flip, latent cache."""

    model_config = ConfigDict(extra="forbid")

    sets: list[ShardSet] = Field(min_length=1)
    resolution: int = 256
    random_flip: bool = True
    shuffle_buffer: int = 1000
    shards_per_block: int = 4  # shards read interleaved per block; a resume replays at most one block
    num_workers: int = 2
    latent_cache: str | None = None  # a folder; when set, a first pass caches VAE latents here


class CFGDropout(BaseModel):
    """Classifier-free guidance: how often the text, the source image or both are dropped."""

    model_config = ConfigDict(extra="forbid")

    text: float = Field(default=0.05, ge=0, le=1)
    image: float = Field(default=0.05, ge=0, le=1)
    both: float = Field(default=0.05, ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_at_most_one(self) -> CFGDropout:
        if self.text + self.image + self.both > 1:
            raise ValueError("cfg_dropout text + image + both must be at most 1")
        return self


class OptimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler: str = "constant"  # any name diffusers.optimization.get_scheduler knows
    lr_warmup_steps: int = 0


class TrainConfig(BaseModel):
    """A whole training run."""

    model_config = ConfigDict(extra="forbid")

    base_model: str  # a hub id or a local folder in diffusers layout (Stable Diffusion 1.5 in the paper)
    output_dir: str
    data: DataConfig
    cfg_dropout: CFGDropout = Field(default_factory=CFGDropout)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train_batch_size: int = 4  # per device
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000  # optimizer steps
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    use_ema: bool = True
    ema_decay: float = 0.9999
    gradient_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: Literal["latest", "none"] | str = "latest"  # or the path of one checkpoint folder
    log_every: int = 10
    seed: int = 0


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """Read a training config; relative local paths in it are relative to the file's folder."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    config = TrainConfig.model_validate(raw)
    base = path.resolve().parent
    config.output_dir = _resolve(config.output_dir, base)
    if _looks_local(config.base_model, base):
        config.base_model = _resolve(config.base_model, base)
    if config.data.latent_cache:
        config.data.latent_cache = _resolve(config.data.latent_cache, base)
    for shard_set in config.data.sets:
        shard_set.urls = [_resolve(u, base) for u in shard_set.urls]
    return config


def _resolve(value: str, base: Path) -> str:
    value = os.path.expanduser(os.path.expandvars(value))
    if "://" in value or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def _looks_local(value: str, base: Path) -> bool:
    """A hub id is ``owner/name``; anything that exists on disk or starts like a path is local."""
    value = os.path.expanduser(os.path.expandvars(value))
    return value.startswith((".", "/", "~")) or (base / value).exists()
