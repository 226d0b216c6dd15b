"""Work pool, concurrency limits and deployments, created from `prefect.yaml` by `ieiw deploy`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

from ieiw.flows.models import GPU_TAG
from ieiw.flows.resources import DEPLOYMENTS, resource_path
from ieiw.flows.server import prefect_executable

WORK_POOL = "ieiw-process"


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


def gpu_slots_default() -> int:
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except ImportError:
        return 1


def deploy(names: list[str] | None = None, prefect_file: Path | None = None) -> str:
    """Run `prefect deploy` on the packaged prefect.yaml (all deployments, or the named ones)."""
    prefect_file = prefect_file or resource_path(DEPLOYMENTS)
    command = [prefect_executable(), "--no-prompt", "deploy", "--prefect-file", str(prefect_file)]
    command += [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout
