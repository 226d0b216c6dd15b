"""Work pool, concurrency limits and deployments, created from `prefect.yaml` by `ieiw deploy`.

The ``gpu`` concurrency limit counts the GPUs of the pool, not of the machine that ran ``ieiw deploy``:
every ``ieiw worker --gpu N`` registers its GPU (``<host>/gpu<N>``) in the Prefect variable
:data:`GPU_POOL_VARIABLE` and sets the limit to the number registered, and removes it again when it
stops. ``ieiw deploy --gpu-slots N`` fixes the pool's size instead (workers then leave the limit
alone; ``--gpu-slots 0`` goes back to counting them). A worker killed without stopping stays counted
until the same host and GPU registers again, or the size is fixed.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound
from prefect.variables import Variable

from ieiw.flows.resources import DEPLOYMENTS, resource_path
from ieiw.flows.server import prefect_executable
from ieiw.storage.stage import GPU_TAG

WORK_POOL = "ieiw-process"
GPU_POOL_VARIABLE = "ieiw_gpu_pool"  # {"size": fixed slots or null, "workers": ["<host>/gpu<N>", ...]}


def ensure_work_pool(name: str = WORK_POOL) -> bool:
    """Create the process work pool if it does not exist; True if created."""
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            return True


def ensure_gpu_limit(slots: int) -> None:
    """At most ``slots`` task runs tagged ``gpu`` at once, across every worker of the server."""
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)


def gpu_limit() -> int | None:
    """The ``gpu`` tag's concurrency limit on the server (None if there is none)."""
    with get_client(sync_client=True) as client:
        try:
            return client.read_concurrency_limit_by_tag(GPU_TAG).concurrency_limit
        except ObjectNotFound:
            return None


def gpu_pool() -> dict:
    """The registered GPU workers and the fixed pool size, if any."""
    pool = Variable.get(GPU_POOL_VARIABLE, default=None) or {}
    return {"size": pool.get("size"), "workers": sorted(set(pool.get("workers") or []))}


def pool_slots(pool: dict) -> int:
    """The ``gpu`` limit a pool asks for: its fixed size, else one slot per registered GPU (at least 1)."""
    return int(pool["size"]) if pool.get("size") else max(1, len(pool["workers"]))


def gpu_worker_name(gpu: str, host: str | None = None) -> str:
    return f"{host or socket.gethostname()}/gpu{gpu}"


def _update_pool(change, attempts: int = 5) -> dict:
    """Apply ``change`` to the pool and store it; re-read and reapply until the stored pool shows it
    (two workers registering at once each write the variable: the one overwritten writes again)."""
    for _ in range(attempts):
        pool = change(gpu_pool())
        Variable.set(GPU_POOL_VARIABLE, pool, overwrite=True)
        time.sleep(random.uniform(0.05, 0.25))
        stored = gpu_pool()
        if change(stored) == stored:
            ensure_gpu_limit(pool_slots(stored))
            return stored
    raise RuntimeError(f"could not update the Prefect variable {GPU_POOL_VARIABLE} after {attempts} tries")


def register_gpu_worker(name: str) -> int:
    """Count the GPU worker ``name`` in the pool; returns the ``gpu`` limit now set."""
    pool = _update_pool(lambda p: {**p, "workers": sorted({*p["workers"], name})})
    return pool_slots(pool)


def unregister_gpu_worker(name: str) -> int:
    """Stop counting the GPU worker ``name``; returns the ``gpu`` limit now set."""
    pool = _update_pool(lambda p: {**p, "workers": sorted(set(p["workers"]) - {name})})
    return pool_slots(pool)


def set_gpu_pool_size(size: int | None) -> int:
    """Fix the pool's GPU count (None or 0: count the registered workers); returns the limit set."""
    pool = _update_pool(lambda p: {**p, "size": size or None})
    return pool_slots(pool)


def worker_environment(gpu: str | int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a worker (and so of every flow run it starts) pinned to ``gpu``."""
    env = dict(os.environ if base is None else base)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def deployments(prefect_file: Path | None = None) -> list[dict]:
    """The packaged deployments: name, description, parameters."""
    import yaml

    data = yaml.safe_load(Path(prefect_file or resource_path(DEPLOYMENTS)).read_text())
    return list(data.get("deployments") or [])


def deploy(
    names: list[str] | None = None, prefect_file: Path | None = None, log: Path | None = None
) -> list[str]:
    """Run `prefect deploy` on the packaged prefect.yaml (all deployments, or the named ones); returns the
    deployments made (``ieiw_build/<name>``). Prefect's own output goes to ``log`` (its advice names
    commands this project wraps: ``ieiw worker``)."""
    prefect_file = prefect_file or resource_path(DEPLOYMENTS)
    command = [prefect_executable(), "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    command += [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(command)}\n{result.stdout}\n{result.stderr}")
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"prefect deploy failed (full output: {log}):\n{tail}")
    wanted = names or [d["name"] for d in deployments(prefect_file)]
    return [f"ieiw_build/{name}" for name in wanted]
