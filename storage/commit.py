"""Commit one batch of stage results: its shards first, then its manifest part as the marker.

This is the storage half of the stage contract: a reader yields records in batches, a stage
turns a batch into samples and drops, and :func:`commit_batch` makes them durable at once.
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from ieiw.storage import fs, manifest
from ieiw.storage.schema import Drop, Result, Sample, stable_key
from ieiw.storage.shards import EncodedSample, ShardSpec, ShardWriter


@dataclass
class BatchReport:
    """What one committed batch holds, for logs, artifacts and data cards."""

    batch: str
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    by_task: Counter = field(default_factory=Counter)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: bool = False
    rows: int = 0  # a rows stage's rows
    counts: Counter = field(default_factory=Counter)  # a rows stage's counts of what it did

    @property
    def total(self) -> int:
        return self.kept + sum(self.dropped.values())


def batch_name(prefix: str, record_ids: Sequence[str]) -> str:
    """A deterministic batch name: the same records give the same name on every run."""
    return f"{prefix}-{stable_key(sorted(record_ids))[:16]}"


def write_batch(
    results: Iterable[Result],
    stage_url: str,
    batch: str,
    spec: ShardSpec | None = None,
    *,
    fingerprint: str | None = None,
    fence: Callable[[], AbstractContextManager] | None = None,
    seconds: float = 0.0,
) -> BatchReport:
    """Write the samples of ``results`` as shards, then all results as the batch's manifest part.

    The part is written last and commits the batch: until it exists the batch's shards are invisible
    to every reader (they list committed parts, never the folder). The part is written inside ``fence()``
    (the stage folder's lease fence: only while the run still holds the stage).
    """
    started = time.perf_counter()
    report = BatchReport(batch=batch)
    rows: list[dict] = []
    seen: set[str] = set()
    shard_dir = fs.join(stage_url, manifest.SHARD_DIR)
    with ShardWriter(shard_dir, prefix=batch, spec=spec) as writer:
        for result in results:
            if result.key in seen:
                raise ValueError(f"batch {batch} produced key {result.key} twice")
            seen.add(result.key)
            if isinstance(result, (Sample, EncodedSample)):
                shard_url = writer.write(result)
                rows.append(manifest.sample_row(result, batch, posixpath.basename(shard_url), fingerprint))
                report.kept += 1
                report.by_task[str(result.meta.task)] += 1
            elif isinstance(result, Drop):
                rows.append(manifest.drop_row(result, batch, fingerprint))
                report.dropped[result.reason] += 1
            else:
                raise TypeError(f"a stage returns Sample or Drop, got {type(result).__name__}")
    report.shards = [s.url for s in writer.written]
    with fence() if fence is not None else contextlib.nullcontext():
        manifest.write_part(
            stage_url, batch, rows, metadata={"fingerprint": fingerprint} if fingerprint else None
        )
    report.seconds = seconds + (time.perf_counter() - started)
    return report


def commit_batch(
    results: Iterable[Result],
    stage_url: str,
    batch: str,
    spec: ShardSpec | None = None,
    seconds: float = 0.0,
) -> BatchReport:
    """:func:`write_batch` without a stage folder's fingerprint or lease (tests and one-off tools)."""
    return write_batch(results, stage_url, batch, spec, seconds=seconds)


def merge_reports(reports: Iterable[BatchReport]) -> dict:
    """Totals over many batches: kept, dropped by reason, samples by task, shard count."""
    dropped: Counter = Counter()
    by_task: Counter = Counter()
    counts: Counter = Counter()
    kept = shards = batches = skipped = rows = 0
    seconds = 0.0
    for report in reports:
        batches += 1
        skipped += int(report.skipped)
        kept += report.kept
        rows += report.rows
        dropped.update(report.dropped)
        by_task.update(report.by_task)
        counts.update(report.counts)
        shards += len(report.shards)
        seconds += report.seconds
    return {
        "batches": batches,
        "batches_skipped": skipped,
        "kept": kept,
        "dropped": dict(sorted(dropped.items())),
        "by_task": dict(sorted(by_task.items())),
        "rows": rows,
        "counts": dict(sorted(counts.items())),
        "shards": shards,
        "seconds": round(seconds, 3),
    }


def committed_batch_report(stage_url: str, batch: str) -> BatchReport:
    """The report of a batch committed earlier (a rerun that skips it reports what it holds)."""
    frame = manifest.read_manifest(stage_url)
    rows = frame[frame["batch"] == batch]
    report = BatchReport(batch=batch, skipped=True, kept=int(rows["kept"].sum()))
    report.dropped = Counter(rows.loc[~rows["kept"], "drop_reason"].tolist())
    report.by_task = Counter(rows.loc[rows["kept"], "task"].tolist())
    report.shards = manifest.committed_shards(stage_url)
    return report
