"""The YAML build config: one file says what to build, from which sources, with which models.

Every command that takes a config reads it with :func:`load_config`, through the one loader of
:mod:`ieiw.storage.config`: relative paths are relative to the file, ``${VARS}`` come from the
environment, and an unknown field, an unset variable or a missing input file is one
:class:`~ieiw.storage.config.ConfigError` line naming the file and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from ieiw.pipelines.grounded.config import GroundedRemovalConfig
from ieiw.pipelines.multitask.config import MultitaskConfig
from ieiw.pipelines.removal import RemovalConfig
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.quality.config import QualityConfig
from ieiw.storage.config import ConfigError, load_config_file, output
from ieiw.storage.shards import ShardSpec


class RunnerConfig(BaseModel):
    """Where batches run: threads in the flow's process, or a Dask cluster (local or remote)."""

    model_config = ConfigDict(extra="forbid")

    task_runner: Literal["threads", "dask"] = "threads"
    max_workers: int = 2
    dask_address: str | None = None  # a running scheduler; None starts a local cluster
    max_in_flight: int = 8  # batches submitted ahead of the ones finished: bounds memory
    retries: int = 2
    retry_delay_seconds: float = 2.0
    # One writing run per stage: a second run waits this long for the first, then stops with a clear
    # message; a lease its holder stops renewing (a killed run on another machine) frees after the ttl.
    lease_wait_seconds: float = 0.0
    lease_ttl_seconds: float = 120.0
    # Dask on a GPU machine: one worker process per GPU, pinned to it (CUDA_VISIBLE_DEVICES), so each
    # model loads once per GPU. "auto": the GPUs this process sees (none: max_workers CPU processes);
    # a list names them (ids or UUIDs); "none": CPU processes only. See ieiw.flows.runners.
    gpus: Literal["auto", "none"] | list[int | str] = "auto"
    threads_per_worker: int = 1  # threads of each Dask GPU worker (its models are shared by them)


class GalleryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = 60
    thumbnail: int = 256


class BuildConfig(BaseModel):
    """A whole build: output location, shard bounds, runner, and one section per generator."""

    model_config = ConfigDict(extra="forbid")

    name: str = "ieiw"
    output: str | None = output(None)  # where the build writes (a folder or an fsspec URL)
    shards: ShardSpec = Field(default_factory=ShardSpec)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    gallery: GalleryConfig = Field(default_factory=GalleryConfig)
    removal: RemovalConfig | None = None
    grounded_removal: GroundedRemovalConfig | None = None  # removal pairs from any photos (grounded)
    replacement: ReplacementConfig | None = None
    web_edits: WebEditsConfig | None = None
    multitask: MultitaskConfig | None = None
    quality: QualityConfig | None = None  # scoring and the filter policy; None keeps every candidate

    _source: str = PrivateAttr("")  # the file it was read from, for messages

    @property
    def source(self) -> str:
        return self._source

    def out(self) -> str:
        """The build's output folder; a config without one cannot build (one-line error)."""
        if not self.output:
            raise ConfigError(self.source or "the config", ["output: required, not given (where to write)"])
        return self.output

    def section(self, name: str):
        """The config's ``name`` section, or a one-line error saying the file has none."""
        value = getattr(self, name)
        if value is None:
            problem = f"{name}: this command needs a `{name}:` section"
            raise ConfigError(self.source or "the config", [problem])
        return value


DEMO = "demo"  # as a config path: the packaged demo build (``ieiw demo``, the deployments' default)
DEMO_DIR_VARIABLE = "IEIW_DEMO_DIR"


def demo_dir_default() -> str:
    """Where the demo writes: ``$IEIW_DEMO_DIR``, else ``./.ieiw/demo`` under the current folder."""
    return os.path.abspath(os.environ.get(DEMO_DIR_VARIABLE) or os.path.join(".ieiw", "demo"))


def demo_config_path() -> Path:
    from ieiw.flows.resources import DEMO_CONFIG, resource_path

    return resource_path(DEMO_CONFIG)


def load_demo_config(workdir: str | os.PathLike | None = None) -> BuildConfig:
    """The packaged demo build, writing under ``workdir`` (default :func:`demo_dir_default`); its
    photographs are written there first (they ship inside scikit-image)."""
    from ieiw.pipelines.sources.demo import materialize_demo_images

    folder = os.path.abspath(os.fspath(workdir)) if workdir is not None else demo_dir_default()
    materialize_demo_images(os.path.join(folder, "images"))
    return load_config(demo_config_path(), variables={DEMO_DIR_VARIABLE: folder})


def load_config(
    path: str | os.PathLike, variables: dict[str, str] | None = None, check_inputs: bool = True
) -> BuildConfig:
    """Read a build config (``path`` may be :data:`DEMO`, the packaged demo); see the module docstring.
    ``check_inputs=False`` only validates it (a recipe read where its data is not)."""
    if str(path) == DEMO and variables is None:
        return load_demo_config()
    config = load_config_file(path, BuildConfig, variables, check_inputs=check_inputs)
    config._source = str(path)
    return config
