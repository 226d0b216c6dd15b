"""`ieiw deploy` and `ieiw worker`: run builds the way a team does, from deployments and workers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer) -> None:
    @app.command("deploy")
    def deploy_command(
        name: list[str] = typer.Option(None, "--name", help="deploy only these (default: all)"),
        gpu_slots: int | None = typer.Option(
            None,
            help="fix the pool's GPU count, the concurrent GPU batches allowed (default: one per "
            "`ieiw worker --gpu` running, at least 1; 0 goes back to counting them)",
        ),
    ) -> None:
        """Create the work pool, the `gpu` concurrency limit and the packaged deployments (prefect.yaml)."""
        from ieiw.flows.deploy import (
            WORK_POOL,
            deploy,
            ensure_gpu_limit,
            ensure_work_pool,
            gpu_pool,
            pool_slots,
            set_gpu_pool_size,
        )

        created = ensure_work_pool()
        console.print(f"work pool {WORK_POOL}: {'created' if created else 'exists'}")
        if gpu_slots is not None:
            slots = set_gpu_pool_size(gpu_slots)
        else:
            slots = pool_slots(gpu_pool())
            ensure_gpu_limit(slots)
        workers = gpu_pool()["workers"]
        console.print(
            f"concurrency limit: at most {slots} batch task(s) tagged 'gpu' at once "
            f"({len(workers)} GPU worker(s) registered: {', '.join(workers) or 'none'})"
        )
        log = Path(".ieiw") / "logs" / "prefect-deploy.log"
        made = deploy(name or None, log=log)
        console.print(f"deployments ({len(made)}; Prefect's own output: {log}):")
        for deployment in made:
            console.print(f"  {deployment}")
        console.print(
            "Next: start a worker on each machine that should run builds: `ieiw worker` (CPU work), or\n"
            "one `ieiw worker --gpu N` per GPU. Then run a build with your config (a path the workers\n"
            "can read):\n"
            "  prefect deployment run 'ieiw_build/build' --param config=/path/to/build.yaml\n"
            "Without --param config, a deployment builds the packaged demo, which writes to the worker's\n"
            "$IEIW_DEMO_DIR (default: .ieiw/demo under the folder the worker was started in)."
        )

    @app.command("worker")
    def worker_command(
        pool: str = typer.Option("ieiw-process", help="work pool to pull runs from"),
        gpu: str = typer.Option(
            None,
            "--gpu",
            help="pin this worker and every flow run it starts to GPU N (CUDA_VISIBLE_DEVICES=N), and "
            "count it in the `gpu` concurrency limit while it runs",
        ),
        name: str = typer.Option(None, help="the worker's name (default: <host>-gpu<N> or Prefect's)"),
        run_once: bool = typer.Option(False, "--run-once", help="poll once, run what is there, then stop"),
    ) -> None:
        """Start a process worker that runs this project's deployments (one per GPU with --gpu)."""
        from ieiw.flows.deploy import (
            gpu_worker_name,
            register_gpu_worker,
            unregister_gpu_worker,
            worker_environment,
        )
        from ieiw.flows.server import prefect_executable

        command = [prefect_executable(), "worker", "start", "--pool", pool, "--type", "process"]
        slot = gpu_worker_name(gpu) if gpu is not None else None
        if slot is not None:
            command += ["--name", name or slot.replace("/", "-")]
            limit = register_gpu_worker(slot)
            console.print(f"worker {slot}: CUDA_VISIBLE_DEVICES={gpu}; the 'gpu' limit is now {limit}")
        elif name:
            command += ["--name", name]
        if run_once:
            command.append("--run-once")
        try:
            code = subprocess.call(command, env=worker_environment(gpu))
        finally:
            if slot is not None:
                console.print(f"worker {slot} stopped; the 'gpu' limit is now {unregister_gpu_worker(slot)}")
        raise typer.Exit(code)
