"""Map a stage over batches of records as Prefect tasks, commit each batch, resume where it stopped.

Every generator flow is this runner plus its reader and its batch function: the batch function is
a module-level callable ``fn(records, settings) -> list[Sample | Drop]`` that takes its models from
:func:`ieiw.flows.models.cached_model`, so they load once per worker process.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
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
from ieiw.flows.storage_errors import store_errors
from ieiw.storage import fs, manifest
from ieiw.storage.commit import BatchReport, batch_name, commit_batch, merge_reports, prune_orphan_shards
from ieiw.storage.schema import Drop, Result
from ieiw.storage.shards import ShardSpec

BatchFn = Callable[[list[Any], Any], list[Result]]


@task(
    name="process-batch", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[2, 10]
)
def process_batch(
    batch_fn: BatchFn, settings: Any, items: list[Any], stage_url: str, batch: str, shard_spec: ShardSpec
) -> BatchReport:
    """Run the stage on one batch and commit its shards and manifest part."""
    started = time.perf_counter()
    drops = [item for item in items if isinstance(item, Drop)]
    records = [item for item in items if not isinstance(item, Drop)]
    results = batch_fn(records, settings) if records else []
    with store_errors(f"batch {batch}", stage_url):
        return commit_batch(
            [*drops, *results], stage_url, batch, shard_spec, seconds=time.perf_counter() - started
        )


def artifact_key(stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in stage.lower())


def _record_id(item: Any) -> str:
    return item.record_id


def pending_batches(
    items: Iterable[Any], done: set[str], batch_size: int, duplicates: list[str]
) -> Iterator[list[Any]]:
    """Batches of the items not finished before; a repeated record id is skipped and noted."""
    seen: set[str] = set()

    def fresh() -> Iterator[Any]:
        for item in items:
            rid = _record_id(item)
            if rid in done:
                continue
            if rid in seen:
                duplicates.append(rid)
                continue
            seen.add(rid)
            yield item

    stream = fresh()
    while chunk := list(itertools.islice(stream, batch_size)):
        yield chunk


def run_stage(
    stage: str,
    items: Iterable[Any],
    batch_fn: BatchFn,
    settings: Any,
    stage_url: str,
    shard_spec: ShardSpec | None,
    batch_size: int,
    runner: RunnerConfig | None = None,
    total: int | None = None,
    tags: list[str] | None = None,
) -> dict:
    """Process every pending record of ``items`` in batches; returns the merged summary.

    Batches run as ``process-batch`` tasks on the flow's task runner, at most ``max_in_flight`` at
    once; failed batches are retried with exponential backoff; ``tags`` go on every batch task.
    Publishes the counts, a summary and a table of a few samples as artifacts.
    """
    logger = get_run_logger()
    runner = runner or RunnerConfig()
    shard_spec = shard_spec or ShardSpec()
    max_in_flight, retries = runner.max_in_flight, runner.retries
    with store_errors(f"stage {stage}", stage_url):
        fs.makedirs(stage_url)
        for folder in (manifest.SHARD_DIR, manifest.MANIFEST_DIR):
            stale = fs.remove_stale_temporaries(fs.join(stage_url, folder))
            if stale:
                logger.warning("%s: removed %d temporary files left by an interrupted run", stage, stale)
        done = manifest.completed_record_ids(stage_url)
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
    duplicates: list[str] = []
    reports: list[BatchReport] = []
    in_flight: deque[tuple[PrefectFuture, int]] = deque()
    pending_total = None if total is None else max(total - len(done), 0)
    bar = tqdm(total=pending_total, desc=stage, unit="rec")
    processed = 0

    def collect(future: PrefectFuture, size: int) -> None:
        nonlocal processed
        reports.append(future.result())
        processed += size
        bar.update(size)
        if pending_total:
            update_progress_artifact(progress_id, min(100.0, 100.0 * processed / pending_total))

    for chunk in pending_batches(items, done, batch_size, duplicates):
        name = batch_name(stage, [_record_id(i) for i in chunk])
        in_flight.append((worker.submit(batch_fn, settings, chunk, stage_url, name, shard_spec), len(chunk)))
        while len(in_flight) >= max_in_flight:
            collect(*in_flight.popleft())
    while in_flight:
        collect(*in_flight.popleft())
    bar.close()
    update_progress_artifact(progress_id, 100.0)

    with store_errors(f"stage {stage}", stage_url):
        orphans = prune_orphan_shards(stage_url)
        if orphans:
            logger.warning("%s: removed %d shards of batches that never committed", stage, len(orphans))
        consolidated = manifest.consolidate(stage_url)
    summary = merge_reports(reports)
    summary.update(
        stage=stage, resumed_records=len(done), duplicate_records=len(duplicates), manifest=consolidated
    )
    publish_summary(stage, summary)
    publish_sample_table(stage, consolidated)
    logger.info("%s: kept %d, dropped %s", stage, summary["kept"], summary["dropped"])
    return summary


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
