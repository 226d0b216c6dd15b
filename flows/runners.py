"""Task runners chosen by the build config, never by the stages' code.

On a machine with GPUs the Dask runner starts one worker process per GPU, each pinned to its GPU by
``CUDA_VISIBLE_DEVICES`` (so ``cuda`` inside it is that GPU, and each model loads once per GPU, on
it): dask-cuda's ``LocalCUDACluster`` where dask-cuda is installed, otherwise a ``SpecCluster`` of
nannies with one GPU in each worker's environment and a ``GPU`` worker resource. No scheduler of
ours: Dask places the batches. Without GPUs it is a local cluster of ``max_workers`` processes, as
before; a running scheduler (``dask_address``) brings its own workers (start them with
``dask cuda worker`` on GPU machines).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from ieiw.flows.config import RunnerConfig

GPU_RESOURCE = "GPU"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (ids or UUIDs), or
    ``0..n-1`` of the GPUs torch sees when the variable is unset."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        names = [name.strip() for name in listed.split(",") if name.strip()]
        return [] if names[:1] == ["-1"] else names
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def worker_gpu() -> str | None:
    """The GPU this process is pinned to (``CUDA_VISIBLE_DEVICES`` naming exactly one), else None."""
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return visible[0].strip() if len(visible) == 1 else None


def worker_gpus(config: RunnerConfig) -> list[str]:
    """The GPUs that get a Dask worker each: the visible ones (``auto``, where torch sees any), the
    listed ones, or none."""
    if config.gpus == "none":
        return []
    if config.gpus == "auto":
        import torch

        return visible_gpus() if torch.cuda.device_count() > 0 else []
    return [str(gpu) for gpu in config.gpus]


def gpu_cluster(gpus: list[str], threads_per_worker: int = 1, **kwargs: Any):
    """A local Dask cluster with one worker process per GPU, pinned to it: worker ``gpu-<id>`` sees only
    that GPU (``CUDA_VISIBLE_DEVICES=<id>``) and offers one ``GPU`` resource."""
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu-{gpu}": {
            "cls": Nanny,
            "options": {
                "nthreads": threads_per_worker,
                "env": {"CUDA_VISIBLE_DEVICES": gpu},
                "resources": {GPU_RESOURCE: 1},
            },
        }
        for gpu in gpus
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler, name="ieiw-gpus", **kwargs)


def _dask_cuda_usable(gpus: list[str]) -> bool:
    """dask-cuda is installed and the GPUs are real (it asks the driver about each)."""
    if importlib.util.find_spec("dask_cuda") is None:
        return False
    import torch

    return torch.cuda.is_available() and len(gpus) <= torch.cuda.device_count()


def make_task_runner(config: RunnerConfig):
    """Threads in the flow's process, or Dask (a scheduler address, a worker per GPU, or a local
    cluster of processes)."""
    if config.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=config.max_workers)
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    gpus = worker_gpus(config)
    if gpus and _dask_cuda_usable(gpus):
        return DaskTaskRunner(
            cluster_class="dask_cuda.LocalCUDACluster",
            cluster_kwargs={
                "CUDA_VISIBLE_DEVICES": ",".join(gpus),
                "threads_per_worker": config.threads_per_worker,
                "dashboard_address": None,
            },
        )
    if gpus:
        return DaskTaskRunner(
            cluster_class="ieiw.flows.runners.gpu_cluster",
            cluster_kwargs={"gpus": gpus, "threads_per_worker": config.threads_per_worker},
        )
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": config.max_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )


@contextmanager
def build_task_runner(config: RunnerConfig) -> Iterator[Any]:
    """The task runner every stage of one build runs on. Where it is a Dask cluster of our own, the
    cluster starts once for the build, not once per stage's flow run: its worker processes start, import
    and load their models once (a model two stages share stays loaded), and a stage's wall time is its
    work. A scheduler at ``dask_address`` and the thread pool are used as they are."""
    runner = make_task_runner(config)
    if getattr(runner, "address", "threads") is not None:  # threads, or a running scheduler
        yield runner
        return
    from distributed import LocalCluster
    from prefect_dask import DaskTaskRunner

    make = runner.resolved_cluster_class or LocalCluster
    with make(**runner.cluster_kwargs) as cluster:
        yield DaskTaskRunner(address=cluster.scheduler_address)
