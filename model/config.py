"""The training config: one YAML file says what to train from, on which shards, and how.

The data section is a list of shard sets, each with a sampling weight and the metadata field its
text comes from (``instruction``, ``pretrain_caption``, or ``rewritten_instruction``: the judge's
wording of the pair where it wrote one). A config may instead list ``stages``
(the paper's curriculum: caption pre-training, the weighted task mix, instruction tuning), each
with its own shard sets and a few overrides; :mod:`ieiw.model.curriculum` turns every stage into a
plain single-stage config of this same shape. A config without ``stages`` is one stage.

A stage's ``objective`` is ``edit`` (the InstructPix2Pix denoising loss on source, instruction, target) or
``preference``: Diffusion-DPO (:mod:`ieiw.model.dpo`) on preference pairs (our ``preference`` shards or the
Diffusion-DPO Hugging Face layout, :mod:`ieiw.model.dpo_layout`) against the frozen starting checkpoint,
with ``beta`` the strength of the pull towards that reference. A shard set's ``choosers`` keeps only the
pairs chosen by those (``human``, ``judge``, a reward model...), so picks and scores can be trained on apart
or weighted against each other.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ieiw.storage.config import (
    ConfigError,
    input_folder,
    load_config_file,
    missing_inputs,
    model_ref,
    operational,
    output,
    parse_config,
    read_yaml,
)

# rewritten_instruction: the quality judge's wording of the pair when it wrote one (sample_decode.sample_text)
TextField = Literal["instruction", "pretrain_caption", "rewritten_instruction"]
# edit: the denoising loss on (source, instruction, target); preference: Diffusion-DPO on preference pairs
Objective = Literal["edit", "preference"]
DEFAULT_BETA = 5000.0  # Wallace et al.'s beta for SD 1.5 (the loss's beta/2: diffusers' --beta_dpo 2500)


class ShardSet(BaseModel):
    """Shards (files or folders of ``*.tar``) sampled with probability proportional to ``weight``."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = input_folder()  # stage folders, shard folders, .tar files or brace patterns
    weight: float = Field(default=1.0, gt=0)
    text_field: TextField | None = None  # None: the stage's text_field, else ``instruction``
    name: str = ""  # names the set in the logged mix; ``set<i>`` when empty
    # preference pairs: only those whose ``chooser`` is one of these (None: every pair)
    choosers: list[str] | None = Field(default=None, min_length=1)


def _unique_names(sets: list[ShardSet]) -> None:
    names = [s.name for s in sets if s.name]
    if len(names) != len(set(names)):
        raise ValueError(f"shard set names must be unique, got {names}")


class BucketConfig(BaseModel):
    """Aspect-ratio buckets (:mod:`ieiw.model.buckets`): shapes of about ``resolution``² pixels."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(default=64, gt=0)  # sides are multiples of this (of the model's downsampling too)
    max_aspect: float = Field(default=2.0, ge=1)


class DataConfig(BaseModel):
    """How shards become batches: sampling, shuffling, workers, crop and flip, buckets, latent cache."""

    model_config = ConfigDict(extra="forbid")

    sets: list[ShardSet] = Field(default_factory=list)  # empty only when the stages list theirs
    resolution: int = 256  # the square crop's side, or with buckets the side of their area
    buckets: BucketConfig | None = None  # None: square crops
    # multi-turn sessions: every sample, single turns only (no whole-session sample) or whole sessions only
    sessions: Literal["all", "turns", "whole"] = "all"
    random_flip: bool = True
    shuffle_buffer: int = 1000
    shards_per_block: int = 4  # shards read interleaved per block; a resume replays at most one block
    num_workers: int = operational(2)
    latent_cache: str | None = output(None)  # a folder; when set, a first pass caches VAE latents here

    @model_validator(mode="after")
    def _names(self) -> DataConfig:
        _unique_names(self.sets)
        return self


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


StageName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]


class StageConfig(BaseModel):
    """One curriculum stage: its data mix and what it changes of the run's settings.

    Unset fields take the run's (top-level) value. ``text_field`` applies to the stage's shard
    sets that do not name their own. ``image_conditioning: false`` trains text-to-image on the
    target: the source-image latent is zeros, as when classifier-free training drops it.
    """

    model_config = ConfigDict(extra="forbid")

    name: StageName
    data: list[ShardSet] = Field(min_length=1)
    text_field: TextField | None = None
    image_conditioning: bool = True
    objective: Objective | None = None  # None: the run's (``edit`` by default)
    beta: float | None = Field(default=None, gt=0)  # preference: the Diffusion-DPO beta (None: the run's)
    max_steps: int | None = Field(default=None, gt=0)
    epochs: float | None = Field(default=None, gt=0)
    learning_rate: float | None = Field(default=None, gt=0)
    lr_warmup_steps: int | None = Field(default=None, ge=0)
    train_batch_size: int | None = Field(default=None, gt=0)
    cfg_dropout: CFGDropout | None = None
    checkpoint_every: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> StageConfig:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError(f"stage {self.name!r}: give max_steps or epochs, not both")
        _unique_names(self.data)
        return self


class TrainConfig(BaseModel):
    """A whole training run: one stage, or the ``stages`` of a curriculum in order."""

    model_config = ConfigDict(extra="forbid")

    # a hub id or a local folder in diffusers layout (Stable Diffusion 1.5 in the paper)
    base_model: str = model_ref()
    # one stage: the model is saved here; stages: each in <output_dir>/<stage name>/
    output_dir: str = output()
    data: DataConfig = Field(default_factory=DataConfig)
    stages: list[StageConfig] | None = None
    cfg_dropout: CFGDropout = Field(default_factory=CFGDropout)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train_batch_size: int = 4  # per device
    gradient_accumulation_steps: int = 1
    max_steps: int = Field(default=1000, gt=0)  # optimizer steps
    epochs: float | None = Field(default=None, gt=0)  # instead of max_steps: passes over the data
    image_conditioning: bool = True  # false: text-to-image (the source latent is zeros)
    # edit, or preference: Diffusion-DPO against the frozen base_model, on preference pairs
    objective: Objective = "edit"
    beta: float = Field(default=DEFAULT_BETA, gt=0)  # preference: loss -log sigmoid(-beta/2 * ...)
    # keys the latent cache; default base_model (stages share it)
    latent_cache_model: str | None = model_ref(None)
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

    @model_validator(mode="after")
    def _stages_or_data(self) -> TrainConfig:
        if {"max_steps", "epochs"} <= self.model_fields_set and self.epochs is not None:
            raise ValueError("give max_steps or epochs, not both")
        if self.stages is None:
            if not self.data.sets:
                raise ValueError("data.sets needs at least one shard set (or list `stages`)")
            return self
        if not self.stages:
            raise ValueError("stages is empty")
        if self.data.sets:
            raise ValueError(
                "with stages, each stage lists its own data; top-level data holds only the "
                "shared settings (resolution, workers, latent cache)"
            )
        names = [s.name for s in self.stages]
        if len(names) != len(set(names)):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.resume not in ("latest", "none"):
            raise ValueError(
                "with stages, resume must be `latest` or `none` (each stage resumes from its own folder)"
            )
        return self


# The options of ``ieiw train`` that override a config's fields: option -> the field's dotted path.
OVERRIDES = {
    "base": "base_model",
    "output_dir": "output_dir",
    "max_steps": "max_steps",
    "batch_size": "train_batch_size",
    "resolution": "data.resolution",
    "mixed_precision": "mixed_precision",
    "num_workers": "data.num_workers",
}
# also set in every stage of a curriculum (a stage may set its own)
PER_STAGE = ("max_steps", "train_batch_size")


def train_overrides(cwd: str | os.PathLike | None = None, **options: Any) -> dict[str, Any]:
    """The fields that ``ieiw train``'s options (``base``, ``output_dir``, ``max_steps``,
    ``batch_size``, ``resolution``, ``mixed_precision``, ``num_workers``; None: not given) set, by
    dotted path. Paths given on the command line are relative to ``cwd`` (the working folder), not to
    the config file: ``--output-dir`` always, ``--base`` where it is a path (it exists there, or is
    written as one: ``./``, ``../``, ``/``, ``~``); a hub id stays as it is."""
    unknown = set(options) - set(OVERRIDES)
    if unknown:
        raise TypeError(f"no override for {sorted(unknown)}; known: {sorted(OVERRIDES)}")
    base = Path(cwd) if cwd is not None else Path.cwd()
    fields: dict[str, Any] = {}
    for option, value in options.items():
        if value is None:
            continue
        if option == "output_dir":
            value = str((base / os.path.expanduser(str(value))).resolve())
        elif option == "base":
            text = os.path.expanduser(str(value))
            if os.path.isabs(text) or (base / text).exists() or str(value).startswith((".", "~")):
                value = str((base / text).resolve())
        fields[OVERRIDES[option]] = value
    return fields


def apply_overrides(raw: Any, overrides: Mapping[str, Any]) -> Any:
    """A config's raw YAML tree with ``overrides`` (dotted path -> value) set, before it is validated:
    an overridden value is checked exactly as the file's own. ``max_steps`` replaces ``epochs`` (the
    run's and each stage's), and ``max_steps`` and ``train_batch_size`` apply to every stage too."""
    if not overrides or not isinstance(raw, dict):
        return raw
    tree = copy.deepcopy(raw)
    for path, value in overrides.items():
        *parents, name = path.split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[name] = value
        if path == "max_steps":
            tree.pop("epochs", None)
        if path in PER_STAGE and isinstance(tree.get("stages"), list):
            for stage in tree["stages"]:
                if isinstance(stage, dict):
                    stage[path] = value
                    if path == "max_steps":
                        stage.pop("epochs", None)
    return tree


def _option_of(problem: str, overrides: Mapping[str, Any]) -> str:
    """A problem line of an overridden field, naming the option it came from."""
    options = {path: option for option, path in OVERRIDES.items()}
    for path, value in overrides.items():
        if re.match(rf"^(stages\[\d+\]\.)?{re.escape(path)}:", problem):
            return f"{problem} (from --{options[path].replace('_', '-')} {value})"
    return problem


def load_train_config(
    path: str | os.PathLike, check_inputs: bool = True, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Read a training config with the one config loader (:func:`ieiw.storage.config.load_config_file`):
    ``${VARS}`` from the environment, relative paths relative to the file's folder, one line per
    problem in a :class:`~ieiw.storage.config.ConfigError`.

    ``overrides`` (dotted field path -> value, :func:`train_overrides`) are set on the file's fields
    before they are validated (:func:`apply_overrides`), so a bad one is a problem line like any other.

    ``check_inputs`` checks the run's own inputs now (the base model, the shard sets of a config without
    stages); a curriculum stage's shard sets are checked when that stage starts
    (:func:`missing_stage_inputs`), as its instruction-tuning picks may not exist before it."""
    if overrides:
        path = Path(path)
        raw = apply_overrides(read_yaml(path), overrides)
        try:
            config = parse_config(raw, TrainConfig, str(path), path.resolve().parent, check_inputs=False)
        except ConfigError as error:
            raise ConfigError(error.source, [_option_of(p, overrides) for p in error.problems]) from None
    else:
        config = load_config_file(path, TrainConfig, check_inputs=False)
    if check_inputs:
        problems = missing_inputs(config.model_copy(update={"stages": None}))
        if problems:
            raise ConfigError(str(path), [_option_of(p, overrides or {}) for p in problems])
    return config


def missing_stage_inputs(config: TrainConfig) -> list[str]:
    """One line per shard set input of a (single-stage) config that is not there."""
    return missing_inputs(config.data, "data")
