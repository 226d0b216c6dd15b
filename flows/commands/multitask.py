"""`ieiw evaluate-task` (score edited images on the original vision task) and `ieiw multitask-demo`."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table

console = Console()
TASK_CHOICES = ("keypoints", "segmentation", "enhancement")


def _shard_urls(paths: list[str]) -> list[str]:
    """Shard files or folders; a stage output folder (with ``shards/``) stands for its shards."""
    from ieiw.storage import manifest
    from ieiw.storage.shards import expand_shard_urls

    inputs = []
    for path in paths:
        nested = os.path.join(path, manifest.SHARD_DIR)
        inputs.append(nested if "://" not in path and os.path.isdir(nested) else path)
    return expand_shard_urls(inputs)


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
    return str(value)


def evaluate_task(
    task: str = typer.Option(..., "--task", help="keypoints | segmentation | enhancement"),
    shards: list[str] = typer.Option(..., "--shards", help="held-out shard files or folders (repeatable)"),
    edits: str = typer.Option(
        None, "--edits", help="folder of the edited images, <key>.png (what `ieiw edit --shards -o` wrote)"
    ),
    output: str = typer.Option(
        None,
        "-o",
        "--output",
        help="folder for metrics.json, the per-sample CSV and the grid (default: task_eval)",
    ),
    limit: int | None = typer.Option(None, help="at most this many samples of the task"),
    examples: int = typer.Option(12, help="rows in the grid of examples"),
    outputs: str = typer.Option(None, "--outputs", hidden=True),  # the old name of --edits
    out: str = typer.Option(None, "--out", hidden=True),  # the old name of --output
) -> None:
    """Decode the answers out of edited images and score them: keypoint AP, mIoU/cIoU, PSNR/SSIM."""
    import itertools

    from ieiw.model.reports import write_json
    from ieiw.quality.task_evaluation import TASKS, OutputFolder, evaluate_task_outputs
    from ieiw.storage.shards import iter_samples

    edits = edits or outputs
    if not edits:
        raise typer.BadParameter("give the folder of edited images", param_hint="--edits")
    out = output or out or "task_eval"
    if task not in TASKS:
        raise typer.BadParameter(f"--task must be one of {', '.join(TASK_CHOICES)}", param_hint="--task")
    urls = _shard_urls(shards)
    if not urls:
        raise typer.BadParameter(f"no shards found in {shards}", param_hint="--shards")
    samples = (s for s in iter_samples(urls) if s.meta.task == TASKS[task])
    if limit is not None:
        samples = itertools.islice(samples, limit)
    folder = OutputFolder(edits)
    metrics, rows, grid = evaluate_task_outputs(task, samples, folder, out, grid_examples=examples)
    metrics_path = os.path.join(out, f"{TASKS[task]}_metrics.json")
    write_json(metrics_path, metrics, indent=2, default=float)  # strict JSON: a NaN metric is null
    table = Table("metric", "value", title=f"{task} on {metrics['samples']} samples")
    for row in rows:
        table.add_row(row["metric"], _format(row["value"]))
    console.print(table)
    if metrics["samples"] == 0:
        console.print(f"[yellow]no {task} samples in {shards}[/yellow]")
        raise typer.Exit(1)
    console.print(f"metrics: {metrics_path}")
    if grid:
        console.print(f"grid of examples: {grid}")


def multitask_demo(
    output: str = typer.Option(".ieiw/demo/multitask", "-o", "--output", help="build output folder"),
    images: str = typer.Option(".ieiw/demo/images", help="where the demo photos are written"),
) -> None:
    """Render a few keypoint, segmentation and enhancement samples on the bundled photos."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ieiw.flows.server import ensure_server
    from ieiw.flows.stage_flow import run_stage_flow
    from ieiw.pipelines.multitask.demo import demo_multitask_config
    from ieiw.pipelines.multitask.stage import MultitaskStage
    from ieiw.pipelines.sources.demo import materialize_demo_images
    from ieiw.storage.layout import BuildLayout

    materialize_demo_images(images)
    config = demo_multitask_config(os.path.abspath(images))
    stage = MultitaskStage(config, BuildLayout(os.path.abspath(output)).generator("multitask"))
    with temporary_settings(updates={PREFECT_API_URL: ensure_server()}):
        summary = run_stage_flow(stage, rebuild="changed")  # the demo owns its folder
    console.print(f"multitask demo: {summary.outcome()}; by task {summary.by_task}")
    console.print(f"shards: {stage.url}/shards (read them through {stage.url}/manifest.parquet)")


def register(app: typer.Typer) -> None:
    app.command("evaluate-task")(evaluate_task)
    app.command("multitask-demo")(multitask_demo)
