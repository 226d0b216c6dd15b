"""The YAML build config: one file says what to build, from which sources, with which models."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ieiw.pipelines.inpaint.factory import InpaintConfig
from ieiw.pipelines.multitask.config import MultitaskConfig
from ieiw.pipelines.removal import RemovalSettings, SessionSettings
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.sources.phrasecut import RegionSettings
from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.quality.config import QualityConfig
from ieiw.storage.fs import resolve_path
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


class PhraseCutSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    annotations: list[str]  # refer_*.json files
    images: str  # folder of Visual Genome <image_id>.jpg
    materialize_demo_images: bool = False  # write scikit-image's photos into `images` first (the demo)
    dataset: str = "phrasecut"  # provenance of every sample: dataset name, license, image URLs
    license: str | None = "CC BY 4.0 (Visual Genome images and PhraseCut annotations)"
    # image_data_split.json (PhraseCut) or image_data.json (Visual Genome): each image's URL and size
    image_data: str | None = None
    url_template: str | None = None  # only without image_data; VG's images live under two folders


class SessionsConfig(BaseModel):
    """Multi-turn sessions of the removal generator: the phrases of one image removed one after another."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=3, ge=2)
    max_overlap: float = Field(default=0.1, ge=0, le=1)  # more covered by earlier turns: an ordinary pair
    whole_session: bool = True  # also the first source and the last target as one sample
    window: int = Field(default=256, ge=1)  # images whose phrases are gathered at once from the stream

    def settings(self) -> SessionSettings:
        return SessionSettings(self.max_turns, self.max_overlap, self.whole_session)


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
    sessions: SessionsConfig | None = None  # multi-turn sessions; None: every phrase is its own pair
    batch_size: int = 64  # records per task and per commit; larger batches amortise orchestration
    limit: int | None = None

    def settings(self) -> RemovalSettings:
        return RemovalSettings(
            region=RegionSettings(self.dilation, self.min_area_fraction, self.max_area_fraction),
            make_add_pairs=self.make_add_pairs,
            min_change=self.min_change,
            sessions=self.sessions.settings() if self.sessions is not None else None,
        )

    def fingerprinted(self) -> dict:
        """The section as its fingerprint sees it: without sessions it is what it was before they existed,
        so builds made then keep their fingerprint."""
        return self.model_dump(mode="json", exclude={"sessions"} if self.sessions is None else None)


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
    replacement: ReplacementConfig | None = None
    web_edits: WebEditsConfig | None = None
    multitask: MultitaskConfig | None = None
    quality: QualityConfig | None = None  # scoring and the filter policy; None keeps every candidate


# Keys whose string values (or lists of strings) are file or folder paths, anywhere in the config.
PATH_KEYS = {
    "output",
    "image_data",
    "annotations",
    "images",
    "root",
    "labels",
    "refs",
    "instances",
    "captions",
    "cache_dir",
    "state_path",
    "index_dir",
    "submissions",
    "comments",
    "database",
    "checkpoint",
    "index_path",
}
# Keys that hold a model: a local path when it exists next to the config, else a hub id or a URL.
MODEL_KEYS = {"model", "pretrained", "sam_checkpoint", "model_path"}


def _resolve_model(value: str, base: Path) -> str:
    value = os.path.expanduser(os.path.expandvars(value))
    if "://" in value or os.path.isabs(value):
        return value
    local = base / value
    return str(local.resolve()) if local.exists() else value


def resolve_tree(node: Any, base: Path) -> Any:
    """Resolve every path-like value of a raw (YAML) config tree against ``base``."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in PATH_KEYS and isinstance(value, str):
                out[key] = resolve_path(value, base)
            elif key in PATH_KEYS and isinstance(value, list) and all(isinstance(v, str) for v in value):
                out[key] = [resolve_path(v, base) for v in value]
            elif key in MODEL_KEYS and isinstance(value, str):
                out[key] = _resolve_model(value, base)
            else:
                out[key] = resolve_tree(value, base)
        return out
    if isinstance(node, list):
        return [resolve_tree(item, base) for item in node]
    return node


DEMO = "demo"  # as a config path: the packaged demo build (``ieiw demo``, the deployments' default)
DEMO_DIR_VARIABLE = "IEIW_DEMO_DIR"
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def expand_variables(node: Any, variables: dict[str, str]) -> Any:
    """Replace ``${NAME}`` and ``$NAME`` in every string of a raw config tree from ``variables``, then
    the environment; a name set in neither is a clear error instead of a folder called ``$NAME``."""
    if isinstance(node, dict):
        return {key: expand_variables(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [expand_variables(item, variables) for item in node]
    if not isinstance(node, str) or "$" not in node:
        return node

    def substitute(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        value = variables.get(name, os.environ.get(name))
        if value is None:
            raise ValueError(f"the config uses ${{{name}}} in {node!r}, but {name} is not set")
        return value

    return _VARIABLE.sub(substitute, node)


def demo_dir_default() -> str:
    """Where the demo writes: ``$IEIW_DEMO_DIR``, else ``./.ieiw/demo`` under the current folder."""
    return os.path.abspath(os.environ.get(DEMO_DIR_VARIABLE) or os.path.join(".ieiw", "demo"))


def demo_config_path() -> Path:
    from ieiw.flows.resources import DEMO_CONFIG, resource_path

    return resource_path(DEMO_CONFIG)


def load_demo_config(workdir: str | os.PathLike | None = None) -> BuildConfig:
    """The packaged demo build, writing under ``workdir`` (default :func:`demo_dir_default`)."""
    folder = os.path.abspath(os.fspath(workdir)) if workdir is not None else demo_dir_default()
    return load_config(demo_config_path(), variables={DEMO_DIR_VARIABLE: folder})


def load_config(path: str | os.PathLike, variables: dict[str, str] | None = None) -> BuildConfig:
    """Read a build config; relative paths in it are relative to the file's folder.

    ``path`` may be :data:`DEMO` for the packaged demo. ``${NAME}`` in a value comes from
    ``variables`` or the environment.
    """
    if str(path) == DEMO and variables is None:
        return load_demo_config()
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    raw = expand_variables(raw, variables or {})
    base = path.resolve().parent
    config = BuildConfig.model_validate(resolve_tree(raw, base))
    if config.replacement is not None:  # its model fields may be hub ids, its database a folder it writes
        config.replacement.resolve_paths(lambda v: _resolve_model(v, base), lambda v: resolve_path(v, base))
    return config
