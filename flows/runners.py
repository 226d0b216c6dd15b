"""Task runners chosen by the build config, never by the stages' code."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from ieiw.flows.config import RunnerConfig


def make_task_runner(config: RunnerConfig):
    """Threads in the flow's process, or Dask (a local cluster of processes, or a scheduler address)."""
    if config.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=config.max_workers)
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": config.max_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )
