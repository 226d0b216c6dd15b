"""`ieiw deploy` and `ieiw worker`: run builds the way a team does, from deployments and workers."""

from __future__ import annotations

import subprocess

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy_command(
        name: list[str] = typer.Option(None, "--name", help="deploy only these (default: all)"),
        gpu_slots: int = typer.Option(0, help="concurrent GPU batches allowed (default: GPUs here, min 1)"),
    ) -> None:
        """Create the work pool, the `gpu` concurrency limit and the packaged deployments (prefect.yaml)."""
        from ieiw.flows.deploy import WORK_POOL, deploy, ensure_gpu_limit, ensure_work_pool, gpu_slots_default

        created = ensure_work_pool()
        console.print(f"work pool {WORK_POOL}: {'created' if created else 'exists'}")
        slots = gpu_slots or gpu_slots_default()
        ensure_gpu_limit(slots)
        console.print(f"concurrency limit: at most {slots} batch task(s) tagged 'gpu' at once")
        console.print(deploy(name or None))
        console.print(
            "Start a worker with `ieiw worker`, then for example:\n"
            "  prefect deployment run 'ieiw_build/build' --param config=/path/to/build.yaml"
        )

    @app.command("worker")
    def worker_command(pool: str = typer.Option("ieiw-process", help="work pool to pull runs from")) -> None:
        """Start a process worker that runs this project's deployments."""
        from ieiw.flows.server import prefect_executable

        raise typer.Exit(
            subprocess.call([prefect_executable(), "worker", "start", "--pool", pool, "--type", "process"])
        )
