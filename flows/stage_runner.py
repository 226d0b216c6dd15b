"""Map a stage over batches of records as Prefect tasks, commit each batch, resume where it stopped.

Every generator flow is this runner plus its reader, its batch function and its fingerprint: the
batch function is a module-level callable ``fn(records, settings) -> list[Sample | Drop]`` that takes
its models from :func:`ieiw.flows.models.cached_model`, so they load once per worker process.

The runner opens the stage folder (:mod:`ieiw.storage.stage_folder`): it takes the stage's lease,
stops before any work if the folder was made with another fingerprint (unless told to rebuild), and
cleans what killed runs left. Batches are cut from the input in its own order, before any work, so
a batch has the same name whatever finished first and however often the run was resumed.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.tasks import exponential_backoff
from tqdm.auto import tqdm

from ieiw.flows.config import RunnerConfig
from ieiw.flows.fingerprints import with_shard_encoding
from ieiw.flows.storage_errors import store_errors
from ieiw.storage import fs, manifest
from ieiw.storage.commit import BatchReport, batch_name, merge_reports
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.schema import Drop, Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import Rebuild, StageWriter, commit_samples, complete_record, open_stage

BatchFn = Callable[[list[Any], Any], list[Result]]


@task(
    name="process-batch", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[2, 10]
)
def process_batch(
    batch_fn: BatchFn,
    settings: Any,
    items: list[Any],
    target: BatchTarget,
    batch: str,
) -> BatchReport:
    """Run the stage on one batch and commit its shards and manifest part (if the lease is still held)."""
    started = time.perf_counter()
    drops = [item for item in items if isinstance(item, Drop)]
    records = [item for item in items if not isinstance(item, Drop)]
    results = batch_fn(records, settings) if records else []
    with store_errors(f"batch {batch}", target.stage_url):
        return commit_samples(
            target.stage_url,
            batch,
            [*drops, *results],
            target.shard_spec,
            target.fingerprint,
            target.holder,
            target.stage,
            seconds=time.perf_counter() - started,
        )


@dataclass(frozen=True)
class BatchTarget:
    """Where a batch task commits, and on whose behalf: small enough to send to any worker."""

    stage: str
    stage_url: str
    shard_spec: ShardSpec
    fingerprint: str
    holder: str


def artifact_key(stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in stage.lower())


def _record_id(item: Any) -> str:
    return item.record_id


def input_batches(items: Iterable[Any], batch_size: int) -> Iterator[list[Any]]:
    """The input cut into consecutive batches in its own order (done records included), so a batch's
    composition, and so its name, never depends on what a previous run finished."""
    stream = iter(items)
    while chunk := list(itertools.islice(stream, batch_size)):
        yield chunk


def pending_batches(
    items: Iterable[Any], done: set[str], batch_size: int, duplicates: list[str]
) -> Iterator[list[Any]]:
    """The records of each input batch not committed before; a repeated record id is skipped and noted."""
    seen: set[str] = set()
    for chunk in input_batches(items, batch_size):
        pending = []
        for item in chunk:
            rid = _record_id(item)
            if rid in seen:
                duplicates.append(rid)
                continue
            seen.add(rid)
            if rid not in done:
                pending.append(item)
        if pending:
            yield pending


def current_run_id() -> str:
    """The Prefect flow run this code runs in, for the lease record ('' outside a flow run)."""
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def open_stage_for(
    stage: str, stage_url: str, fingerprint: Fingerprint, runner: RunnerConfig, rebuild: Rebuild, info=None
) -> StageWriter:
    """The stage folder opened for this run with the runner's lease settings."""
    return open_stage(
        stage_url,
        fingerprint,
        rebuild=rebuild,
        lease_ttl=runner.lease_ttl_seconds,
        lease_wait=runner.lease_wait_seconds,
        run=current_run_id(),
        info=info,
    )


def run_stage(
    stage: str,
    items: Iterable[Any],
    batch_fn: BatchFn,
    settings: Any,
    stage_url: str,
    shard_spec: ShardSpec | None,
    batch_size: int,
    fingerprint: Fingerprint,
    runner: RunnerConfig | None = None,
    total: int | None = None,
    tags: list[str] | None = None,
    rebuild: Rebuild = "no",
    info: dict | None = None,
    input_key: str | None = None,
) -> dict:
    """Process every pending record of ``items`` in batches; returns the merged summary.

    ``input_key`` names the input beyond the fingerprint (:func:`ieiw.flows.fingerprints.input_key`);
    given, a run that went through all of it records the stage complete for it, and
    :func:`complete_stage_summary` lets the next build skip the stage's flow run.

    Opens the stage folder with ``fingerprint`` (a changed one raises
    :class:`~ieiw.storage.stage_folder.StageChanged` before any work, unless ``rebuild``). Batches run as
    ``process-batch`` tasks on the flow's task runner, at most ``max_in_flight`` at once; failed
    batches are retried with exponential backoff; ``tags`` go on every batch task. Publishes the
    counts, a summary and a table of a few samples as artifacts.
    """
    runner = runner or RunnerConfig()
    shard_spec = shard_spec or ShardSpec()
    with contextlib.ExitStack() as held:
        with store_errors(f"stage {stage}", stage_url):
            fingerprint = with_shard_encoding(fingerprint, shard_spec)
            writer = held.enter_context(open_stage_for(stage, stage_url, fingerprint, runner, rebuild, info))
        return _run_batches(
            writer, items, batch_fn, settings, shard_spec, batch_size, runner, total, tags, input_key
        )


def _run_batches(
    writer: StageWriter,
    items: Iterable[Any],
    batch_fn: BatchFn,
    settings: Any,
    shard_spec: ShardSpec,
    batch_size: int,
    runner: RunnerConfig,
    total: int | None,
    tags: list[str] | None,
    input_key: str | None = None,
) -> dict:
    logger = get_run_logger()
    stage, max_in_flight, retries = writer.stage, runner.max_in_flight, runner.retries
    stage_url = writer.url
    if writer.rebuilt:
        logger.warning("%s: rebuilding (%s)", stage, "; ".join(writer.changes) or "asked to")
    if any(writer.cleaned.values()):
        logger.warning("%s: removed what interrupted runs left: %s", stage, writer.cleaned)
    with store_errors(f"stage {stage}", stage_url):
        done = writer.completed_record_ids()
    if done:
        logger.info("%s: resuming, %d records already committed", stage, len(done))
    progress_id = create_progress_artifact(
        0.0, key=f"{artifact_key(stage)}-progress", description=f"{stage}: share of records processed"
    )
    worker = process_batch.with_options(
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=runner.retry_delay_seconds)(retries)
        if retries
        else 0,
        retry_jitter_factor=0.2,
        tags=set(tags or ()),  # e.g. "gpu": a tag concurrency limit keeps GPU batches from oversubscribing
    )
    target = BatchTarget(stage, stage_url, shard_spec, writer.digest, writer.holder)
    duplicates: list[str] = []
    reports: list[BatchReport] = []
    in_flight: deque[tuple[PrefectFuture, int]] = deque()
    pending_total = None if total is None else max(total - len(done), 0)
    bar = tqdm(total=pending_total, desc=stage, unit="rec")
    processed = 0
    started = time.perf_counter()

    def collect(future: PrefectFuture, size: int) -> None:
        nonlocal processed
        reports.append(future.result())
        processed += size
        bar.update(size)
        if pending_total:
            update_progress_artifact(progress_id, min(100.0, 100.0 * processed / pending_total))

    for chunk in pending_batches(items, done, batch_size, duplicates):
        name = batch_name(stage, [_record_id(i) for i in chunk])
        in_flight.append((worker.submit(batch_fn, settings, chunk, target, name), len(chunk)))
        while len(in_flight) >= max_in_flight:
            collect(*in_flight.popleft())
    while in_flight:
        collect(*in_flight.popleft())
    bar.close()
    update_progress_artifact(progress_id, 100.0)

    summary = merge_reports(reports)
    with store_errors(f"stage {stage}", stage_url):
        consolidated = writer.finish(
            {
                "batches": summary["batches"],
                "kept": summary["kept"],
                "compute_seconds": summary["seconds"],
                "loop_seconds": round(time.perf_counter() - started, 3),
                "device": runner_device(),
            },
            complete_for=input_key,
            records=len(done) + processed,
        )
    summary.update(
        stage=stage,
        resumed_records=len(done),
        duplicate_records=len(duplicates),
        manifest=consolidated,
        fingerprint=writer.digest,
        rebuilt=writer.rebuilt,
    )
    publish_summary(stage, summary)
    publish_sample_table(stage, consolidated)
    logger.info("%s: kept %d, dropped %s", stage, summary["kept"], summary["dropped"])
    return summary


def complete_stage_summary(
    stage: str, stage_url: str, fingerprint: Fingerprint, shard_spec: ShardSpec | None, key: str
) -> dict | None:
    """The summary of a run with nothing to do, when the stage is recorded complete for this
    fingerprint (with its shard encoding) and input; None when its flow has to run."""
    digest = with_shard_encoding(fingerprint, shard_spec or ShardSpec()).digest
    with store_errors(f"stage {stage}", stage_url):
        record = complete_record(stage_url, digest, key)
    if record is None:
        return None
    summary = merge_reports([])
    summary.update(
        stage=stage,
        complete=True,
        resumed_records=record.get("records"),
        duplicate_records=0,
        manifest=fs.join(stage_url, manifest.CONSOLIDATED),
        fingerprint=digest,
        rebuilt=False,
    )
    return summary


def runner_device() -> str:
    """The accelerator this process would run models on, for the cost record of a stage."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def publish_summary(stage: str, summary: dict) -> None:
    """Counts as table artifacts and a Markdown summary, visible on the flow run in the UI."""
    rows = [{"outcome": "kept", "reason": "", "count": summary["kept"]}]
    rows += [{"outcome": "dropped", "reason": r, "count": n} for r, n in summary["dropped"].items()]
    create_table_artifact(
        rows, key=f"{artifact_key(stage)}-counts", description=f"{stage}: kept and dropped by reason"
    )
    lines = [f"# {stage}", "", "| | |", "|---|---|"]
    for name in (
        "kept",
        "batches",
        "batches_skipped",
        "shards",
        "resumed_records",
        "duplicate_records",
        "seconds",
    ):
        lines.append(f"| {name} | {summary.get(name)} |")
    for task_name, count in summary["by_task"].items():
        lines.append(f"| samples `{task_name}` | {count} |")
    for reason, count in summary["dropped"].items():
        lines.append(f"| dropped `{reason}` | {count} |")
    lines.append(f"\nManifest: `{summary['manifest']}`")
    create_markdown_artifact(
        "\n".join(lines), key=f"{artifact_key(stage)}-summary", description=f"{stage} summary"
    )


SAMPLE_COLUMNS = ["key", "kept", "task", "instruction", "instruction_source", "image_id", "shard"]


def publish_sample_table(stage: str, manifest_url: str, limit: int = 10) -> None:
    """A table of a few kept samples (key, task, instruction, shard), from the consolidated manifest."""
    filesystem, path = fs.get_fs(manifest_url)
    with filesystem.open(path, "rb") as handle:
        frame = pq.read_table(handle, columns=SAMPLE_COLUMNS).to_pandas()
    rows = frame[frame["kept"]].head(limit).drop(columns="kept").to_dict("records")
    if rows:
        create_table_artifact(
            rows, key=f"{artifact_key(stage)}-samples", description=f"{stage}: a few samples"
        )
