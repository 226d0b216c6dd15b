"""The stage contract: what every writing stage of a build is, whatever it writes and wherever it runs.

A stage (datatrove's pipeline step, img2dataset's numbered input shards) has three parts:

- **inputs**: :meth:`Stage.records` yields its input in its own order, each item with a stable
  ``record_id`` (or a :class:`~ieiw.storage.schema.Drop` for an input it cannot use). The runner cuts
  them into numbered batches named from what is in them and records each batch before any work on it
  (:mod:`ieiw.storage.runner`), so input that grows adds batches and a committed batch is never redone;
- **run**: :meth:`Stage.run` turns one batch into results, given the models :meth:`Stage.models`
  names (loaded once per worker, on its device): samples and drops (a ``samples`` stage, written as
  shards plus manifest rows; :class:`Samples` adds counts) or :class:`Rows` (a ``rows`` stage: a table,
  and files of its own). The
  same batch gives the same bytes wherever and whenever it runs;
- **fingerprint**: :meth:`Stage.fingerprint`, read from the config models' field declarations
  (:func:`ieiw.storage.config.config_fingerprint`), for the workers' :class:`WorkerEnv`.

A stage never knows where it runs: :func:`ieiw.storage.runner.run_stage` maps its batches over an
executor (threads, a Dask cluster through Prefect, the ranks of a training run). Stage objects are
small and picklable: they travel to the workers with their batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel

from ieiw.storage.config import Role, WorkerEnv, role_of
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.manifest import MANIFEST_SCHEMA
from ieiw.storage.schema import Result
from ieiw.storage.shards import ShardSpec

HOST = "host"  # a model that lives in the process's memory only (a database, a table, a client)


@dataclass(frozen=True)
class ModelSpec:
    """A model a stage's batches use: what it is (``key``: its identity and the settings that shape it,
    never a batch size or a device), how to build it (a picklable callable, run once per worker process),
    and the device it is built on (:data:`HOST` for objects on none)."""

    key: str
    load: Any  # Callable[[], object]: a module-level function or a functools.partial of one
    device: str | None = HOST
    batch_size: int | None = None  # set on a shallow copy when it differs from the cached object's


@dataclass
class Rows:
    """What one batch of a ``rows`` stage commits: its manifest part (``table``), files of its own
    (paths relative to the stage folder, written before the part) and counts of what it did."""

    table: pa.Table
    files: Mapping[str, bytes] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Samples:
    """What one batch of a ``samples`` stage commits, with counts of what it did beside the samples and
    drops (downloads by outcome, say): merged into the summary's ``counts``."""

    results: list[Result]
    counts: Mapping[str, int] = field(default_factory=dict)


BatchOutput = list[Result] | Samples | Rows


@dataclass(frozen=True)
class ModelUse:
    """A model a stage loads, as the plan shows it: its role, what it is, the device it is set to."""

    role: str
    model: str
    device: str | None = HOST


@dataclass(frozen=True)
class Work:
    """GPU work a stage does over ``items`` inputs of an operation of the throughput table. ``per``: what
    one item is made of, where the table's figure was measured with other values (``{"steps": 25}``
    against a figure at 50 steps costs half); ``scale``: any further factor."""

    operation: str
    items: int | None
    scale: float = 1.0
    note: str = ""
    per: Mapping[str, float] = field(default_factory=dict)


class Stage:
    """One writing stage. Subclasses set the class attributes and implement :meth:`fingerprint`,
    :meth:`records` and :meth:`run`."""

    name: str = "stage"  # as the build names it: its flow run, its artifacts, its --rebuild name
    writes: ClassVar[Literal["samples", "rows"]] = "samples"
    schema: ClassVar[pa.Schema] = MANIFEST_SCHEMA  # a rows stage's manifest columns
    # The stage's output depends on its whole input (build-wide duplicate flags): a grown input is a
    # rebuild, not more batches.
    whole_input: ClassVar[bool] = False

    def __init__(
        self,
        url: str,
        batch_size: int = 64,
        shards: ShardSpec | None = None,
        tags: Iterable[str] = (),
    ) -> None:
        self.url = url
        self.batch_size = max(1, int(batch_size))
        self.shards = shards or ShardSpec()
        self.tags = tuple(sorted(set(tags)))

    # ------------------------------------------------------------------------------- the contract

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        """What determines the stage's output, for workers of ``env``."""
        raise NotImplementedError

    def records(self) -> Iterable[Any]:
        """The input, in its own order: items with a ``record_id`` (or Drops)."""
        raise NotImplementedError

    def run(self, records: list[Any], models: Mapping[str, Any]) -> BatchOutput:
        """One batch of records into results, with the models of :meth:`models` (by role)."""
        raise NotImplementedError

    def models(self) -> Mapping[str, ModelSpec]:
        """The models a batch needs, by role (loaded once per worker process)."""
        return {}

    # ------------------------------------------------------------------------ optional refinements

    unit: ClassVar[str] = "records"  # what one input record is, for the plan

    def model_uses(self) -> list[ModelUse]:
        """The models the plan shows, with the device each is set to (none by default)."""
        return []

    def plan_inputs(self, upstream_samples: int | None) -> int | None:
        """The input count the plan shows: :meth:`total` (a stage of another's samples: theirs)."""
        return self.total()

    def workload(self, inputs: int | None) -> list[Work]:
        """The GPU work of the whole input (``inputs`` records), for the plan's estimate."""
        return []

    def samples_made(self, inputs: int | None) -> int | None:
        """How many samples ``inputs`` records make at most (what a score stage downstream will read)."""
        return None

    def plan_done(self) -> int | None:
        """How much of :meth:`plan_inputs` is committed, in its units (None: the records of committed
        batches, the plan's default)."""
        return None

    def input_key(self) -> str | None:
        """What decides the stage's input besides its fingerprint, cheaply (its limits, a folder's
        listing): recorded with a run that went through all of it, so a rerun with the same key and
        fingerprint has nothing to do and is not started. None: only listing the input tells."""
        return None

    def total(self) -> int | None:
        """How many records the input holds, for progress (None: unknown)."""
        return None

    def info(self) -> dict[str, Any]:
        """Recorded beside the fingerprint for people, never part of it (where the models were found)."""
        return {}

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        """After every batch committed, in the run that holds the stage (an index over its parts):
        returns what to add to the summary."""
        return {}

    # --------------------------------------------------------------------------------- derived

    def full_fingerprint(self, env: WorkerEnv) -> Fingerprint:
        """:meth:`fingerprint` plus how a samples stage encodes images (the format shapes the bytes;
        shard sizes only cut the same samples differently)."""
        fingerprint = self.fingerprint(env)
        if self.writes != "samples":
            return fingerprint
        encoding = self.shards.model_dump(mode="json", include={"image_format", "jpeg_quality"})
        return Fingerprint(
            stage=fingerprint.stage,
            settings={**fingerprint.settings, "shards": encoding},
            models=fingerprint.models,
            upstream=fingerprint.upstream,
            schema_version=fingerprint.schema_version,
        )

    @property
    def batch_prefix(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name.lower()).strip("-") or "batch"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r} at {self.url})"


def model_key(kind: str, config: BaseModel | None, *extra: Any) -> str:
    """What a model is, for the per-worker cache: its kind and its config section less operational
    fields (at any depth), so a batch size or a device never makes a second copy."""
    tree = _without_operational(config) if config is not None else None
    return f"{kind}:{json.dumps([tree, *extra], sort_keys=True, default=str)}"


def _without_operational(config: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(config).model_fields:
        if role_of(type(config), name) in (Role.OPERATIONAL, Role.LIMIT, Role.OUTPUT):
            continue
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            out[name] = _without_operational(value)
        elif isinstance(value, (list, tuple)):
            out[name] = [_without_operational(v) if isinstance(v, BaseModel) else v for v in value]
        else:
            out[name] = value
    return out


GPU_TAG = "gpu"


def gpu_tags(uses_model: bool, device: str | None) -> list[str]:
    """The ``gpu`` tag for batches whose model runs on a GPU (explicitly, or by default when one exists)."""
    if not uses_model or (device not in (None, "auto") and not device.startswith("cuda")):
        return []
    if device in (None, "auto"):
        import torch

        if not torch.cuda.is_available():
            return []
    return [GPU_TAG]


def folder_listing_key(*folders: str | None, suffixes: tuple[str, ...] = ()) -> str:
    """A digest of what several local folders hold (names and sizes, not contents): the cheap input key
    of a stage whose input is image folders that may grow. A remote folder is listed through fsspec."""
    from ieiw.storage import fs

    digest = hashlib.sha256()
    for folder in folders:
        if not folder:
            continue
        digest.update(f"{folder}\n".encode())
        if "://" not in folder and os.path.isdir(folder):
            entries = []
            for root, dirs, files in os.walk(folder):
                dirs.sort()
                for name in sorted(files):
                    if name.startswith(".") or (suffixes and not name.lower().endswith(suffixes)):
                        continue
                    path = os.path.join(root, name)
                    entries.append(f"{os.path.relpath(path, folder)}\0{os.path.getsize(path)}")
            digest.update("\n".join(entries).encode())
        else:
            filesystem, path = fs.get_fs(folder)
            try:
                found = sorted(filesystem.find(path, detail=True).items())
            except FileNotFoundError:
                found = []
            digest.update("\n".join(f"{k}\0{v.get('size')}" for k, v in found).encode())
    return digest.hexdigest()
