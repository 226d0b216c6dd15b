"""The one runner: any stage's batches mapped over an executor, each committed through the stage folder.

:func:`run_stage` opens the stage folder (its lease; a changed fingerprint stops before any work
unless told to rebuild), cuts the stage's input into numbered batches and records each one before any
work on it, submits the batches that are not committed to the executor, and finishes the stage. On
the worker, :func:`run_batch` takes the stage's models from the process's cache (:func:`worker_model`:
each loaded once per worker process, on that worker's device), runs the batch and commits it.

Executors are anything with ``submit(fn, *args) -> future`` and ``probe() -> WorkerEnv``:
:class:`ThreadExecutor` here; Prefect tasks on a thread pool or a Dask cluster in ``flows/``; the ranks of
a training run in ``model/``. The stage never knows which.

Batches: a resumed run names its work as the first run did. The listing holds a prefix of the input
(minus duplicates), in order; a batch listed and not committed is run again with exactly its records;
records after the listing are cut into new batches of ``batch_size``. Input that grew (a limit raised,
images added) becomes new batches; committed records are never redone.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import copy
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from ieiw.storage import fs, manifest
from ieiw.storage.commit import BatchReport, batch_name, merge_reports, write_batch
from ieiw.storage.config import WorkerEnv
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.lease import DEFAULT_TTL, fenced
from ieiw.storage.manifest import RecordSet
from ieiw.storage.models import pin_stage
from ieiw.storage.schema import Drop
from ieiw.storage.stage import HOST, ModelSpec, Rows, Samples, Stage
from ieiw.storage.stage_folder import (
    Rebuild,
    StageChanged,
    StageWriter,
    commit_files,
    complete_record,
    open_stage,
    read_record,
)

log = logging.getLogger("ieiw.runner")


class WorkerMismatch(RuntimeError):
    """A worker computes on another kind of device than the one the stage was fingerprinted for."""


# --------------------------------------------------------------------------------------- executors


class Future(Protocol):
    def result(self) -> Any: ...

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...


class Executor(Protocol):
    """Runs batches somewhere. An executor may instead offer ``run_all(fn, [args, ...]) -> [results]``
    (the ranks of a training run, which take their shares of all pending batches at once): the runner
    then plans every pending batch first and hands them over together."""

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future: ...

    def probe(self) -> WorkerEnv: ...


class ThreadExecutor:
    """Batches on threads of this process (``max_workers`` at once)."""

    def __init__(self, max_workers: int = 1) -> None:
        self.max_workers = max(1, max_workers)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="batch")
        return self._pool.submit(fn, *args)

    def probe(self) -> WorkerEnv:
        return WorkerEnv.here()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> ThreadExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------ worker models

_MODELS: dict[tuple[str, str], Any] = {}
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_GUARD = threading.Lock()
LOADS: dict[str, int] = {}  # how often each key was built in this process: a test checks models load once


def resolve_device(device: str | None) -> str:
    """One spelling per device: ``cpu`` or ``cuda:N`` (``auto``/``None``: the GPU if there is one).

    Inside a worker pinned to one GPU (``CUDA_VISIBLE_DEVICES``) ``cuda`` and ``cuda:0`` are that GPU."""
    if device == HOST:
        return HOST
    if device in (None, "", "auto"):
        import torch

        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return device if ":" in device else "cuda:0"  # what it would be; loading will say why not
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        return f"cuda:{index}"
    return device


def worker_model(spec: ModelSpec) -> Any:
    """The model ``spec`` names, built once per process and device (``spec.load()`` the first time)."""
    slot = (spec.key, resolve_device(spec.device))
    model = _MODELS.get(slot)
    if model is None:
        with _GUARD:
            lock = _LOCKS.setdefault(slot, threading.Lock())
        with lock:
            if slot not in _MODELS:
                _MODELS[slot] = spec.load()
                LOADS[spec.key] = LOADS.get(spec.key, 0) + 1
        model = _MODELS[slot]
    if spec.batch_size is not None and getattr(model, "batch_size", spec.batch_size) != spec.batch_size:
        model = copy.copy(model)
        model.batch_size = spec.batch_size
    return model


def loaded_models(kind: str | None = None) -> list[tuple[str, str]]:
    """``(key, device)`` of every model this process holds (whose key starts with ``kind:``, if given)."""
    return sorted(slot for slot in _MODELS if kind is None or slot[0].startswith(f"{kind}:"))


def forget_models(prefix: str | None = None) -> None:
    """Drop this process's models (those whose key starts with ``prefix``)."""
    for slot in [s for s in _MODELS if prefix is None or s[0].startswith(prefix)]:
        del _MODELS[slot]
    if prefix is None:
        LOADS.clear()


# ------------------------------------------------------------------------------------------ batches


@dataclass(frozen=True)
class Batch:
    """Input batch number ``index`` of a stage, named from its records."""

    name: str
    index: int
    items: list[Any]


@dataclass(frozen=True)
class BatchTarget:
    """Where a batch commits and on whose behalf; small enough to send to any worker. ``env`` is the
    workers' kind the fingerprint was made for, when the fingerprint depends on it."""

    stage: str
    url: str
    digest: str
    holder: str | None
    env: WorkerEnv | None = None


_BATCH: contextvars.ContextVar[str] = contextvars.ContextVar("ieiw_batch", default="")


def current_batch() -> str:
    """The name of the batch :meth:`Stage.run` is running in this thread ('' outside one): a ``rows``
    stage whose own files are named after their batch (the object database's parts) reads it."""
    return _BATCH.get()


def run_batch(stage: Stage, batch: Batch, target: BatchTarget) -> BatchReport:
    """On a worker: run ``stage`` on one batch with this process's models and commit it."""
    if target.env is not None and (here := WorkerEnv.here()) != target.env:
        raise WorkerMismatch(
            f"stage {target.stage}: this worker computes on {here.describe()}, but the stage was "
            f"fingerprinted for workers on {target.env.describe()}; run a build on workers of one kind"
        )
    started = time.perf_counter()
    drops = [item for item in batch.items if isinstance(item, Drop)]
    records = [item for item in batch.items if not isinstance(item, Drop)]
    output: Any = []
    if records:
        models = {role: worker_model(spec) for role, spec in stage.models().items()}
        token = _BATCH.set(batch.name)
        try:
            output = stage.run(records, models)
        finally:
            _BATCH.reset(token)
    if stage.writes == "samples":
        if isinstance(output, Rows):
            raise TypeError(f"stage {stage.name} writes samples, but its batch returned rows")
        counts = output.counts if isinstance(output, Samples) else {}
        results = output.results if isinstance(output, Samples) else output
        report = write_batch(
            [*drops, *results],
            target.url,
            batch.name,
            stage.shards,
            fingerprint=target.digest,
            fence=lambda: fenced(target.url, target.stage, target.holder),
            seconds=time.perf_counter() - started,
        )
        report.counts.update(dict(counts))
        return report
    if not isinstance(output, Rows):
        output = Rows(stage.schema.empty_table())
    commit_files(
        target.url, batch.name, output.table, output.files, target.digest, target.holder, target.stage
    )
    report = BatchReport(batch=batch.name, rows=output.table.num_rows, seconds=time.perf_counter() - started)
    report.counts.update(dict(output.counts))
    report.dropped.update(d.reason for d in drops)
    return report


def plan_batches(stage: Stage, writer: StageWriter, noted: Counter) -> Iterator[Batch]:
    """The batches of ``stage`` that are not committed, each listed in the stage before it is yielded.

    ``noted`` counts what the plan saw: records already committed, repeated record ids, batches resumed.
    """
    listing = writer.listing()
    committed = writer.committed_batches()
    batches = listing.column("batch").to_pylist()
    ids = listing.column("record_id").to_pylist()
    indexes = listing.column("index").to_pylist()
    mask = pa.array([b in committed for b in batches], pa.bool_())
    done = RecordSet([listing.column("record_id").combine_chunks().filter(mask)])
    open_batches: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    for name, index, rid in zip(batches, indexes, ids, strict=True):
        if name not in committed:
            entry = open_batches.setdefault(name, {"index": index, "ids": [], "items": {}})
            entry["ids"].append(rid)
            owner[rid] = name
    next_index = max(indexes, default=-1) + 1
    noted["records_committed_before"] += len(done)
    noted["batches_committed_before"] += len(committed)
    seen: set[str] = set()
    chunk: list[Any] = []

    def listed(name: str) -> Batch:
        entry = open_batches.pop(name)
        noted["batches_resumed"] += 1
        return Batch(name, entry["index"], [entry["items"][r] for r in entry["ids"] if r in entry["items"]])

    def new_batch(items: list[Any]) -> Batch:
        nonlocal next_index
        record_ids = [item.record_id for item in items]
        name = batch_name(stage.batch_prefix, record_ids)
        writer.list_batch(name, next_index, record_ids)
        next_index += 1
        return Batch(name, next_index - 1, items)

    for item in stage.records():
        rid = item.record_id
        if rid in seen:
            noted["duplicate_records"] += 1
            continue
        seen.add(rid)
        if rid in done:
            continue
        name = owner.pop(rid, None)
        if name is not None:
            entry = open_batches[name]
            entry["items"][rid] = item
            if len(entry["items"]) == len(entry["ids"]):
                yield listed(name)
            continue
        chunk.append(item)
        if len(chunk) >= stage.batch_size:
            yield new_batch(chunk)
            chunk = []
    if chunk:
        yield new_batch(chunk)
    for name in list(open_batches):  # listed by a killed run, and some of its records are gone now
        entry = open_batches[name]
        gone = [r for r in entry["ids"] if r not in entry["items"]]
        noted["records_gone"] += len(gone)
        batch = listed(name)
        drops = [
            Drop(key=f"gone-{r}", reason="input_gone", detail="no longer in the input", record_id=r)
            for r in gone
        ]
        yield Batch(batch.name, batch.index, [*batch.items, *drops])


# ------------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class RunOptions:
    """How a run opens its stage: rebuild mode, lease timing, how many batches may be in flight."""

    rebuild: Rebuild = "no"
    max_in_flight: int = 8
    lease_ttl: float = DEFAULT_TTL
    lease_wait: float = 0.0
    run: str = ""  # the flow run (or other) this run belongs to, for the lease record


@dataclass
class StageSummary:
    """What one run of a stage did: the same shape for every stage."""

    stage: str
    url: str
    writes: str = "samples"  # what the stage writes: samples (shards) or rows (its own table)
    fingerprint: str = ""
    batches: int = 0  # run now
    batches_committed_before: int = 0
    batches_resumed: int = 0  # listed by an interrupted run, run now
    records: int = 0  # input records processed now
    records_committed_before: int = 0
    duplicate_records: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    by_task: dict[str, int] = field(default_factory=dict)
    rows: int = 0  # a rows stage's rows written now
    counts: dict[str, int] = field(default_factory=dict)  # a rows stage's counts
    shards: int = 0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    rebuilt: bool = False
    changes: list[str] = field(default_factory=list)
    complete: bool = False  # every batch of the whole input is committed
    skipped: bool = False  # recorded complete for this fingerprint and input: nothing ran
    device: str = ""
    manifest: str = ""
    pins: list[str] = field(default_factory=list)  # how hub and URL models were pinned
    extra: dict[str, Any] = field(default_factory=dict)  # what the stage's own finish adds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def outcome(self) -> str:
        """What the run did, in words (the CLI's line for the stage)."""
        if self.skipped:
            return f"complete ({self.records_committed_before} records committed before), nothing to do"
        before = (
            f"; {self.records_committed_before} records committed before"
            if self.records_committed_before
            else ""
        )
        if self.writes == "rows":
            counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
            return (
                f"{self.rows} rows from {self.records} records" + (f" ({counts})" if counts else "") + before
            )
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"kept {self.kept} samples, dropped {dropped}" + before


def fingerprint_target(stage: Stage, env: WorkerEnv) -> tuple[Any, WorkerEnv | None]:
    """The stage's fingerprint for workers of ``env``, and ``env`` again if the fingerprint depends on
    it (then every worker must be of that kind)."""
    fingerprint = stage.full_fingerprint(env)
    other = WorkerEnv() if env.accelerator.startswith("cuda") else WorkerEnv("cuda (any GPU)", True)
    return fingerprint, (env if stage.full_fingerprint(other).digest != fingerprint.digest else None)


def pin_models(stage: Stage, keep_recorded: bool = True) -> list[str]:
    """Pin the stage's hub and URL models before anything is fingerprinted (:mod:`ieiw.storage.models`):
    a stage that recorded a hub commit keeps it unless it is rebuilt. Returns what to tell the user."""
    record = read_record(stage.url) if keep_recorded else None
    recorded = ((record or {}).get("fingerprint") or {}).get("models", {}).values()
    return [pin.note for pin in pin_stage(stage, recorded) if pin.note]


def complete_summary(stage: Stage) -> StageSummary | None:
    """The summary of a run with nothing to do, when the stage is recorded complete for its fingerprint
    (for the workers' kind that made it) and its input key; None when it has to run (or its input can
    only be known by listing it)."""
    key = stage.input_key()
    found = complete_record(stage.url, key) if key is not None else None
    if found is None:
        return None
    pin_models(stage)
    digest, record = found
    if stage.full_fingerprint(WorkerEnv(**record.get("env", {}))).digest != digest:
        return None
    return StageSummary(
        stage.name,
        stage.url,
        writes=stage.writes,
        fingerprint=digest,
        records_committed_before=int(record.get("records") or 0),
        complete=True,
        skipped=True,
        manifest=fs.join(stage.url, manifest.CONSOLIDATED),
    )


def recorded_env(record: dict[str, Any] | None) -> WorkerEnv:
    """The workers' kind the stage's last run computed on (this process's when none is recorded)."""
    runs = (record or {}).get("runs") or []
    return WorkerEnv(**runs[-1]["env"]) if runs and runs[-1].get("env") else WorkerEnv.here()


def refuse_changed(stage: Stage) -> None:
    """Raise :class:`StageChanged` when the stage holds output made with other settings than its config
    asks for (for the workers that made it): called before any flow run starts, so a build stops before
    any work. A fingerprint that cannot be made yet (an upstream stage not run) is the run's to check."""
    record = read_record(stage.url)
    if record is None:
        return
    pin_models(stage)
    try:
        fingerprint = stage.full_fingerprint(recorded_env(record))
    except (OSError, ValueError):
        return
    if record["fingerprint"].get("digest") != fingerprint.digest:
        changes = fingerprint.changes(Fingerprint.from_record(record["fingerprint"]))
        raise StageChanged(stage.name, stage.url, changes or ["(the fingerprint's digest differs)"])


def _open(stage: Stage, fingerprint, options: RunOptions, mode: Rebuild) -> StageWriter:
    info = {**stage.info()}
    if stage.whole_input:
        info["input"] = stage.input_key()
    return open_stage(
        stage.url,
        fingerprint,
        rebuild=mode,
        lease_ttl=options.lease_ttl,
        lease_wait=options.lease_wait,
        run=options.run,
        info=info,
    )


@contextlib.contextmanager
def open_for_run(stage: Stage, fingerprint, options: RunOptions, logger: Any = log) -> Iterator[StageWriter]:
    """The stage folder held by this run. A whole-input stage computed over another input than today's
    is rebuilt (its output depends on all of it), with a warning."""
    with _open(stage, fingerprint, options, options.rebuild) as writer:
        recorded = ((read_record(stage.url) or {}).get("info") or {}).get("input")
        if not stage.whole_input or writer.rebuilt or recorded in (None, stage.input_key()):
            yield writer
            return
    logger.warning(
        "%s: its input changed since it was made; its output depends on all of it: rebuilding", stage.name
    )
    with _open(stage, fingerprint, options, "yes") as writer:
        yield writer


class InFlight:
    """Submitted batches, collected in the order they finish (not the order they were submitted), so a
    slow batch never keeps a free worker waiting for the next one to be submitted."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[Any, int]] = {}
        self._finished: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._count = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, future: Future, size: int) -> None:
        number, self._count = self._count, self._count + 1
        self._pending[number] = (future, size)
        future.add_done_callback(lambda _, n=number: self._finished.put(n))

    def next_done(self) -> tuple[Future, int]:
        """The next batch to finish (waiting for one), with its record count."""
        return self._pending.pop(self._finished.get())


def run_stage(
    stage: Stage,
    executor: Executor,
    options: RunOptions | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    logger: Any = log,
) -> StageSummary:
    """Run every batch of ``stage`` that is not committed on ``executor``; returns what was done.

    ``progress(records done now, records to do or None)`` is called after each batch."""
    options = options or RunOptions()
    started = time.perf_counter()
    pins = pin_models(stage, keep_recorded=options.rebuild not in ("yes", True))
    for note in pins:
        logger.info("%s: %s", stage.name, note)
    env = executor.probe()
    fingerprint, pinned = fingerprint_target(stage, env)
    noted: Counter = Counter()
    reports: list[BatchReport] = []
    input_key = stage.input_key()  # before listing: input that appears during the run is not claimed
    with open_for_run(stage, fingerprint, options, logger) as writer:
        if writer.rebuilt:
            logger.warning("%s: rebuilding (%s)", stage.name, "; ".join(writer.changes) or "asked to")
        if any(writer.cleaned.values()):
            logger.warning("%s: removed what interrupted runs left: %s", stage.name, writer.cleaned)
        target = BatchTarget(stage.name, stage.url, writer.digest, writer.holder, pinned)
        total = stage.total()
        in_flight = InFlight()
        processed = 0

        def collect() -> None:
            nonlocal processed
            future, size = in_flight.next_done()
            reports.append(future.result())
            processed += size
            if progress is not None:
                left = None if total is None else max(total - noted["records_committed_before"], 0)
                progress(processed, left)

        run_all = getattr(executor, "run_all", None)
        if run_all is not None:
            batches = list(plan_batches(stage, writer, noted))
            reports = list(run_all(run_batch, [(stage, batch, target) for batch in batches]))
            processed = sum(len(batch.items) for batch in batches)
        else:
            for batch in plan_batches(stage, writer, noted):
                in_flight.add(executor.submit(run_batch, stage, batch, target), len(batch.items))
                while len(in_flight) >= max(1, options.max_in_flight):
                    collect()
            while in_flight:
                collect()
        merged = merge_reports(reports)
        extra = stage.finish(writer, merged) or {}
        records_held = noted["records_committed_before"] + processed
        consolidated = writer.finish(
            {
                "batches": merged["batches"],
                "kept": merged["kept"],
                "rows": merged["rows"],
                "compute_seconds": merged["seconds"],
                "device": env.describe(),
                "env": asdict(env),
                **({"extra": extra} if extra else {}),
            },
            schema=stage.schema,
            complete_for=input_key,
            records=records_held,
            env=asdict(env),
        )
    return StageSummary(
        stage.name,
        stage.url,
        writes=stage.writes,
        fingerprint=writer.digest,
        batches=merged["batches"],
        batches_committed_before=noted["batches_committed_before"],
        batches_resumed=noted["batches_resumed"],
        records=processed,
        records_committed_before=noted["records_committed_before"],
        duplicate_records=noted["duplicate_records"],
        kept=merged["kept"],
        dropped=merged["dropped"],
        by_task=merged["by_task"],
        rows=merged["rows"],
        counts=merged["counts"],
        shards=merged["shards"],
        compute_seconds=merged["seconds"],
        wall_seconds=round(time.perf_counter() - started, 3),
        rebuilt=writer.rebuilt,
        changes=list(writer.changes),
        complete=True,
        device=env.describe(),
        manifest=consolidated,
        pins=pins,
        extra=extra,
    )
