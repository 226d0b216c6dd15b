"""Prefect around the one runner: each stage runs as its own flow run, its batches as tasks.

:func:`run_stage_flow` is how every command and the build run a stage (:class:`ieiw.storage.stage.Stage`):
as a flow run named after the stage, whose batches are ``process-batch`` tasks on the task runner the
build's ``runner:`` section chose (threads, a local Dask cluster, a worker per GPU, a remote
scheduler), retried with backoff and tagged (``gpu``). A stage recorded complete for its fingerprint
and its input starts no flow run at all. The flow run shows the stage's progress, counts, summary and
a few samples as artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from ieiw.flows.config import RunnerConfig
from ieiw.flows.storage_errors import store_errors
from ieiw.storage import fs
from ieiw.storage.config import WorkerEnv
from ieiw.storage.runner import RunOptions, StageSummary, complete_summary, run_stage
from ieiw.storage.stage import Stage
from ieiw.storage.stage_folder import Rebuild


@task(name="process-batch", cache_policy=NO_CACHE, persist_result=False)
def batch_task(fn: Callable[..., Any], *args: Any) -> Any:
    """One batch of a stage, run and committed on whichever worker the task runner chose."""
    return fn(*args)


@task(name="probe-worker", cache_policy=NO_CACHE, persist_result=False)
def probe_task() -> WorkerEnv:
    """What a worker computes on: the stage's fingerprint is made for it."""
    return WorkerEnv.here()


class PrefectExecutor:
    """Batches as Prefect tasks on the running flow's task runner, retried with exponential backoff."""

    def __init__(self, runner: RunnerConfig, tags: tuple[str, ...] = ()) -> None:
        retries = runner.retries
        self.task = batch_task.with_options(
            retries=retries,
            retry_delay_seconds=exponential_backoff(backoff_factor=runner.retry_delay_seconds)(retries)
            if retries
            else 0,
            retry_jitter_factor=0.2,
            tags=set(tags),  # "gpu": a tag concurrency limit keeps GPU batches from oversubscribing
        )
        self.tags = tags

    def submit(self, fn: Callable[..., Any], /, *args: Any):
        return self.task.submit(fn, *args)

    def probe(self) -> WorkerEnv:
        return probe_task.with_options(tags=set(self.tags)).submit().result()


def current_run_id() -> str:
    """The Prefect flow run this code runs in, for the lease record ('' outside a flow run)."""
    from prefect.runtime import flow_run

    return str(flow_run.id or "")


def artifact_key(stage: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "".join(c if c.isalnum() else "-" for c in stage.lower())


@flow(name="stage", log_prints=True)
def stage_flow(stage: Stage, runner: RunnerConfig | None = None, rebuild: Rebuild = "no") -> dict:
    """Run ``stage`` with the one runner: its batches as tasks on this flow's task runner."""
    runner = runner or RunnerConfig()
    logger = get_run_logger()
    progress_id = create_progress_artifact(
        0.0,
        key=f"{artifact_key(stage.name)}-progress",
        description=f"{stage.name}: share of records processed",
    )

    def progress(done: int, total: int | None) -> None:
        if total:
            update_progress_artifact(progress_id, min(100.0, 100.0 * done / total))

    options = RunOptions(
        rebuild=rebuild,
        max_in_flight=runner.max_in_flight,
        lease_ttl=runner.lease_ttl_seconds,
        lease_wait=runner.lease_wait_seconds,
        run=current_run_id(),
    )
    with store_errors(f"stage {stage.name}", stage.url):
        summary = run_stage(stage, PrefectExecutor(runner, stage.tags), options, progress, logger)
    update_progress_artifact(progress_id, 100.0)
    publish_summary(summary)
    if stage.writes == "samples":
        publish_sample_table(summary)
    publish_stage_artifacts(stage, summary)
    logger.info("%s: %s", stage.name, summary.outcome())
    return summary.to_dict()


def publish_stage_artifacts(stage: Stage, summary: StageSummary) -> None:
    """What a kind of stage shows in its flow run beside the counts: the crawl's requests and downloads,
    the score means and histograms, the filter's outcomes, histograms and report pages."""
    kind = stage.name.split(" ", 1)[0]
    if kind == "web_edits":
        from ieiw.flows.commands.web import publish_crawl

        publish_crawl(summary)
    elif kind in ("score", "filter"):
        from ieiw.flows.commands.quality import publish_quality_artifacts

        publish_quality_artifacts(stage, summary)


def run_stage_flow(
    stage: Stage, runner: RunnerConfig | None = None, rebuild: Rebuild = "no", task_runner: Any = None
) -> StageSummary:
    """Run ``stage`` as a flow run of its own name, or not at all when it is recorded complete for its
    fingerprint and input (unless it is to be rebuilt)."""
    if rebuild not in ("yes", True):
        with store_errors(f"stage {stage.name}", stage.url):
            done = complete_summary(stage)
        if done is not None:
            return done
    runner = runner or RunnerConfig()
    if task_runner is None:
        from ieiw.flows.runners import make_task_runner

        task_runner = make_task_runner(runner)
    options: dict[str, Any] = {"name": stage.name.replace(" ", "-"), "task_runner": task_runner}
    result = stage_flow.with_options(**options)(stage, runner, rebuild)
    return StageSummary(**result)


def publish_summary(summary: StageSummary) -> None:
    """Counts as a table artifact and a Markdown summary, visible on the flow run in the UI."""
    key = artifact_key(summary.stage)
    rows = [{"outcome": "kept", "reason": "", "count": summary.kept}] if summary.writes == "samples" else []
    what = "rows" if summary.writes == "rows" else "count"
    rows += [{"outcome": what, "reason": name, "count": n} for name, n in summary.counts.items()]
    rows += [{"outcome": "dropped", "reason": r, "count": n} for r, n in summary.dropped.items()]
    create_table_artifact(
        rows or [{"outcome": "nothing", "reason": "", "count": 0}],
        key=f"{key}-counts",
        description=f"{summary.stage}: what it made, dropped by reason",
    )
    lines = [f"# {summary.stage}", "", summary.outcome(), "", "| | |", "|---|---|"]
    for name in (
        "batches",
        "batches_committed_before",
        "batches_resumed",
        "records",
        "records_committed_before",
        "duplicate_records",
        "shards",
        "compute_seconds",
        "wall_seconds",
        "device",
    ):
        lines.append(f"| {name} | {getattr(summary, name)} |")
    for task_name, count in summary.by_task.items():
        lines.append(f"| samples `{task_name}` | {count} |")
    for reason, count in summary.dropped.items():
        lines.append(f"| dropped `{reason}` | {count} |")
    lines.append(f"\nManifest: `{summary.manifest}`")
    create_markdown_artifact("\n".join(lines), key=f"{key}-summary", description=f"{summary.stage} summary")


SAMPLE_COLUMNS = ["key", "kept", "task", "instruction", "instruction_source", "image_id", "shard"]


def publish_sample_table(summary: StageSummary, limit: int = 10) -> None:
    """A table of a few kept samples (key, task, instruction, shard), from the consolidated manifest."""
    if not summary.manifest or not fs.exists(summary.manifest):
        return
    filesystem, path = fs.get_fs(summary.manifest)
    with filesystem.open(path, "rb") as handle:
        frame = pq.read_table(handle, columns=SAMPLE_COLUMNS).to_pandas()
    rows = frame[frame["kept"]].head(limit).drop(columns="kept").to_dict("records")
    if rows:
        create_table_artifact(
            rows, key=f"{artifact_key(summary.stage)}-samples", description=f"{summary.stage}: a few samples"
        )
