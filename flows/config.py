"""The YAML build config: one file says what to build, from which sources, with which models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipelines.inpaint.factory import InpaintConfig
from pipelines.removal import RemovalSettings
from pipelines.sources.phrasecut import RegionSettings
from storage.shards import ShardSpec


class RunnerConfig(BaseModel):
    """Where batches run: threads in the flow's process, or a Dask cluster (local or remote)."""

    model_config = ConfigDict(extra="forbid")

    task_runner: Literal["threads", "dask"] = "threads"
    max_workers: int = 2
    dask_address: str | None = None  # a running scheduler; None starts a local cluster
    max_in_flight: int = 8  # batches submitted ahead of the ones finished: bounds memory
    retries: int = 2
    retry_delay_seconds: float = 2.0


class PhraseCutSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    annotations: list[str]  # refer_*.json files
    images: str  # folder of Visual Genome <image_id>.jpg


class RemovalConfig(BaseModel):
    """The object-removal generator (PhraseCut regions inpainted away, plus reversed add pairs)."""

    model_config = ConfigDict(extra="forbid")

    source: PhraseCutSource
    inpaint: InpaintConfig = Field(default_factory=InpaintConfig)
    dilation: int = 15
    min_area_fraction: float = 0.005
    max_area_fraction: float = 0.5
    make_add_pairs: bool = True
    min_change: float = 1.0
    batch_size: int = 64  # records per task and per commit; larger batches amortise orchestration
    limit: int | None = None

    def settings(self) -> RemovalSettings:
        return RemovalSettings(
            region=RegionSettings(self.dilation, self.min_area_fraction, self.max_area_fraction),
            make_add_pairs=self.make_add_pairs,
            min_change=self.min_change,
        )


class GalleryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = 60
    thumbnail: int = 256


class BuildConfig(BaseModel):
    """A whole build: output location, shard bounds, runner, and one section per generator."""

    model_config = ConfigDict(extra="forbid")

    name: str = "ieiw"
    output: str
    shards: ShardSpec = Field(default_factory=ShardSpec)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    gallery: GalleryConfig = Field(default_factory=GalleryConfig)
    removal: RemovalConfig | None = None


def _resolve(value: str, base: Path) -> str:
    """Expand ``$VARS`` and ``~``; make a relative local path relative to the config's folder."""
    value = os.path.expanduser(os.path.expandvars(value))
    if "://" in value or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def load_config(path: str | os.PathLike) -> BuildConfig:
    """Read a build config; relative paths in it are relative to the file's folder."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    config = BuildConfig.model_validate(raw)
    return resolve_paths(config, path.resolve().parent)


def resolve_paths(config: BuildConfig, base: Path) -> BuildConfig:
    config.output = _resolve(config.output, base)
    if config.removal:
        source = config.removal.source
        source.annotations = [_resolve(a, base) for a in source.annotations]
        source.images = _resolve(source.images, base)
        model = config.removal.inpaint.model
        if model and not model.startswith(("http://", "https://")):
            config.removal.inpaint.model = _resolve(model, base)
    return config
