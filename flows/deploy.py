"""Work pool, concurrency limits and deployments, created from `prefect.yaml` by `ieiw deploy`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectNotFound

from flows.models import GPU_TAG
from flows.server import prefect_executable

REPO_ROOT = Path(__file__).resolve().parent.parent
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


def deploy(names: list[str] | None = None, project_dir: Path = REPO_ROOT) -> str:
    """Run `prefect deploy` on this project's prefect.yaml (all deployments, or the named ones)."""
    command = [prefect_executable(), "--no-prompt", "deploy"]
    command += [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    result = subprocess.run(command, cwd=project_dir, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout
