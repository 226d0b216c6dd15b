"""``ieiw build CONFIG --plan``: what a build will do and what its GPU work will cost, before any work.

For every stage of the build (:func:`ieiw.flows.stages.build_stages`, the same objects the build runs):
the models it loads and on which device (one copy per GPU worker with a Dask GPU runner), its input
count, what its stage folder already holds (records of committed batches) and whether it was made with
these settings, and an estimate of its GPU-hours: the GPU work the stage says it does
(:meth:`~ieiw.storage.stage.Stage.workload`: LaMa windows, SAM images, CLIP embeddings,
Paint-by-Example pairs) divided by measured throughputs from the table
``flows/resources/throughputs.yaml`` (written by ``bench/gpu_throughput.py``, each figure with the device
it was measured on). A figure measured with ``--tiny`` on a CPU is a placeholder and the plan says so.
Work with no measured figure (BLIP captions, the LLM) is listed without hours; an input that cannot be
counted here makes the hours unknown, never zero.

The build records its plan as ``plan.json`` in its layout, and the data card shows the estimate beside
the cost the stages measured.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ieiw.flows.config import BuildConfig, RunnerConfig
from ieiw.flows.runners import worker_gpus
from ieiw.flows.stages import build_stages
from ieiw.storage import fs, manifest
from ieiw.storage.config import WorkerEnv
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.layout import BuildLayout
from ieiw.storage.stage import Stage
from ieiw.storage.stage_folder import read_listing, read_record

THROUGHPUTS = "throughputs.yaml"

# ---------------------------------------------------------------------------------- the throughputs


@dataclass
class GpuWork:
    """``items`` of one operation of the throughput table left to do (of ``total_items`` for the whole
    stage), and the hours they take at its figure."""

    operation: str
    items: int | None
    hours: float | None = None
    figure: str = ""  # what the hours come from: the figure's rate, device and kind, or why none
    total_items: int | None = None
    total_hours: float | None = None


def throughput_table(path: str | os.PathLike | None = None) -> list[dict]:
    """The measured figures (the packaged table unless ``path``)."""
    if path is None:
        from ieiw.flows.resources import resource_path

        path = resource_path(THROUGHPUTS)
    data = yaml.safe_load(Path(path).read_text()) or {}
    return list(data.get("figures") or [])


def pick_figure(table: list[dict], operation: str) -> dict | None:
    """The figure an estimate uses: measured with the real architectures where there is one (the
    newest), else a tiny one."""
    found = [f for f in table if f.get("operation") == operation and f.get("per_second")]
    if not found:
        return None
    return max(found, key=lambda f: (not f.get("tiny"), str(f.get("date", ""))))


def estimate(
    operation: str, total: int | None, left: int | None, table: list[dict], scale: float = 1.0
) -> GpuWork:
    """``total`` items of ``operation`` (``left`` of them still to do) at the table's figure, each
    costing ``scale`` times what the figure measured."""
    chosen = pick_figure(table, operation)
    if total is None:
        return GpuWork(operation, left, None, "input not counted", total)
    if chosen is None:
        return GpuWork(operation, left, None, "no measured figure", total)

    def hours(items: int | None) -> float | None:
        return None if items is None else items * scale / float(chosen["per_second"]) / 3600.0

    kind = (
        "tiny models on a CPU: a placeholder, not a GPU cost" if chosen.get("tiny") else "real architecture"
    )
    label = f"{chosen['per_second']} {chosen.get('unit', '/s')} on {chosen.get('device', '?')} ({kind})"
    label += f", x{scale:.2f} per item" if scale != 1 else ""
    return GpuWork(operation, left, hours(left), label, total, hours(total))


# ------------------------------------------------------------------------------------------ the plan


@dataclass
class ModelLine:
    role: str
    model: str
    device: str


@dataclass
class StagePlan:
    stage: str
    inputs: int | None
    unit: str
    committed: int | None = None  # input records its committed batches hold
    state: str = "not started"
    models: list[ModelLine] = field(default_factory=list)
    work: list[GpuWork] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float | None:
        """Estimated GPU-hours of the work left (None: some of it has no figure or no input count)."""
        if not self.work:
            return 0.0
        hours = [w.hours for w in self.work]
        return None if any(h is None for h in hours) else sum(hours)  # type: ignore[arg-type]

    @property
    def total_gpu_hours(self) -> float | None:
        """Estimated GPU-hours of the whole stage, done or not."""
        if not self.work:
            return 0.0
        hours = [w.total_hours for w in self.work]
        return None if any(h is None for h in hours) else sum(hours)  # type: ignore[arg-type]


@dataclass
class Plan:
    name: str
    output: str
    stages: list[StagePlan]
    gpus: int
    notes: list[str] = field(default_factory=list)
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )

    @property
    def gpu_hours(self) -> float | None:
        """Hours of the work left, or None when some of it cannot be estimated here."""
        hours = [s.gpu_hours for s in self.stages]
        return None if any(h is None for h in hours) else sum(hours)  # type: ignore[arg-type]

    @property
    def known_gpu_hours(self) -> float:
        return sum(s.gpu_hours or 0.0 for s in self.stages)

    @property
    def total_gpu_hours(self) -> float | None:
        hours = [s.total_gpu_hours for s in self.stages]
        return None if any(h is None for h in hours) else sum(hours)  # type: ignore[arg-type]

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        for stage, plan in zip(data["stages"], self.stages, strict=True):
            stage["gpu_hours"], stage["total_gpu_hours"] = plan.gpu_hours, plan.total_gpu_hours
        data["gpu_hours"], data["total_gpu_hours"] = self.gpu_hours, self.total_gpu_hours
        return data


def device_label(setting: str | None, runner: RunnerConfig) -> str:
    """Where a model with this device setting loads, under this runner."""
    if setting not in (None, "", "auto") and not setting.startswith("cuda"):
        return setting
    if runner.task_runner == "dask" and runner.dask_address:
        return f"{setting or 'auto'} on each worker of the Dask scheduler {runner.dask_address}"
    gpus = worker_gpus(runner) if runner.task_runner == "dask" else []
    if gpus:
        return f"cuda: one copy in each of {len(gpus)} GPU workers (GPUs {', '.join(gpus)})"
    import torch

    if torch.cuda.is_available():
        return f"cuda:0 ({torch.cuda.get_device_name(0)}), shared by the {runner.max_workers} threads"
    return (
        "cpu (no GPU visible here)" if setting in (None, "", "auto") else f"{setting} (no GPU visible here)"
    )


def committed_records(url: str) -> int | None:
    """Input records the stage's committed batches hold (None when it holds nothing yet)."""
    committed = manifest.completed_batches(url)
    if read_record(url) is None and not committed:
        return None
    listing = read_listing(url)
    batches = listing.column("batch").to_pylist()
    return sum(1 for b in batches if b in committed)


def stage_state(stage: Stage) -> str:
    """``not started``, ``complete``, ``current`` (made with these settings, more to do or unknown), or
    what changed."""
    record = read_record(stage.url)
    if record is None:
        return "not started"
    runs = record.get("runs") or []
    env = WorkerEnv(**runs[-1]["env"]) if runs and runs[-1].get("env") else WorkerEnv.here()
    try:
        fingerprint = stage.full_fingerprint(env)
    except (OSError, ValueError) as error:  # an input it reads is not there yet, or unreadable here
        return f"recorded; settings not checked ({type(error).__name__}: {error})"
    if record["fingerprint"].get("digest") != fingerprint.digest:
        changes = fingerprint.changes(Fingerprint.from_record(record["fingerprint"]))
        shown = "; ".join(changes[:3]) + (" ..." if len(changes) > 3 else "")
        return "made with other settings: " + (shown or "(the fingerprint's digest differs)")
    key = stage.input_key()
    if key is not None and any(c.get("input") == key for c in record.get("complete", [])):
        return "complete: the build will not run it"
    return "current"


def _count(stage: Stage, upstream: int | None) -> int | None:
    try:
        return stage.plan_inputs(upstream)
    except (OSError, ValueError):
        return None


def make_plan(config: BuildConfig, stages: list[str] | None = None, table: list[dict] | None = None) -> Plan:
    """The plan of a build (of ``stages`` only, if given: generator names, ``score``, ``filter``)."""
    table = throughput_table() if table is None else table
    runner = config.runner
    made: dict[str, int | None] = {}  # samples each generator makes, for its score and filter stages
    plans: list[StagePlan] = []
    for stage in build_stages(config, set(stages) if stages else None):
        generator = stage.name.split(" ", 1)[-1]
        inputs = _count(stage, made.get(generator))
        done = stage.plan_done() if read_record(stage.url) is not None else None
        plan = StagePlan(
            stage.name, inputs, stage.unit, done if done is not None else committed_records(stage.url)
        )
        plan.state = stage_state(stage)
        if inputs is None:
            plan.unit += " (not countable here)"
        if " " not in stage.name:
            made[stage.name] = stage.samples_made(inputs)
        plan.models = [ModelLine(u.role, u.model, device_label(u.device, runner)) for u in stage.model_uses()]
        done = plan.state.startswith("complete")
        for work in stage.workload(inputs):
            left = 0 if done else _left(work.items, inputs, plan.committed)
            item = estimate(work.operation, work.items, left, table, work.scale * _per(work, table))
            item.figure += f" ({work.note})" if work.note else ""
            plan.work.append(item)
        plans.append(plan)
    gpus = len(worker_gpus(runner)) if runner.task_runner == "dask" and not runner.dask_address else 0
    notes = []
    used = {w.figure for p in plans for w in p.work}
    if any("placeholder" in u for u in used):
        notes.append(
            "Some hours come from figures measured with tiny models on a CPU (bench/gpu_throughput.py "
            "--tiny): placeholders that keep the plan working, not what a GPU costs. Run "
            "bench/gpu_throughput.py on a GPU with --table flows/resources/throughputs.yaml to measure them."
        )
    if any(w.hours is None and w.figure == "no measured figure" for p in plans for w in p.work):
        notes.append("Work without a measured figure (e.g. BLIP captions) has no hours.")
    if any(p.inputs is None for p in plans):
        notes.append("Some inputs cannot be counted here (unreadable, remote, or only known once crawled).")
    return Plan(config.name, config.out(), plans, gpus, notes)


def _per(work, table: list[dict]) -> float:
    """What one item of ``work`` costs in items of the figure it is estimated from (its ``per`` values
    against the figure's ``params``: 25 steps against a figure measured at 50 is half)."""
    figure = pick_figure(table, work.operation) or {}
    params = figure.get("params") or {}
    factor = 1.0
    for name, value in work.per.items():
        if params.get(name):
            factor *= float(value) / float(params[name])
    return factor


def _left(items: int | None, inputs: int | None, committed: int | None) -> int | None:
    """The share of ``items`` (a stage's work over all its ``inputs``) not done yet."""
    if items is None or inputs is None:
        return None
    if not inputs:
        return 0
    done = min(committed or 0, inputs)
    return round(items * (inputs - done) / inputs)


# --------------------------------------------------------------------------------------- recording


def record_plan(config: BuildConfig, stages: list[str] | None = None) -> str:
    """Write the build's plan to ``plan.json`` of its layout (for the data card); returns its URL."""
    plan = make_plan(config, stages)
    url = BuildLayout(config.out()).plan
    fs.write_bytes_atomic(url, json.dumps(plan.record(), indent=2).encode("utf-8"))
    return url


def read_plan(output: str) -> dict | None:
    """The plan a build recorded, if any."""
    url = BuildLayout(output).plan
    return json.loads(fs.read_bytes(url)) if fs.exists(url) else None


# ---------------------------------------------------------------------------------------- printing


def _hours(value: float | None) -> str:
    """Hours as a person reads them: two decimals, or two significant digits below 0.01; ``?`` unknown."""
    if value is None:
        return "?"
    return f"{value:,.2f}" if value == 0 or value >= 0.01 else f"{value:.2g}"


def _number(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def print_plan(plan: Plan, console) -> None:
    """The plan as tables on a rich console: stages, then models and devices, then the GPU work."""
    from rich.table import Table

    stages = Table(
        "stage", "inputs", "done", "state", "GPU-hours (left)", title=f"Plan of build `{plan.name}`"
    )
    for stage in plan.stages:
        stages.add_row(
            stage.stage,
            f"{_number(stage.inputs)} {stage.unit}",
            _number(stage.committed or 0),
            stage.state,
            "no GPU work" if not stage.work else _hours(stage.gpu_hours),
        )
    console.print(stages)
    models = Table("stage", "role", "model", "device", title="Models each stage loads")
    for stage in plan.stages:
        for use in stage.models:
            models.add_row(stage.stage, use.role, use.model, use.device)
    console.print(models)
    work = Table("stage", "GPU work", "items", "GPU-hours", "from", title="GPU work and its estimate")
    for stage in plan.stages:
        for item in stage.work:
            work.add_row(stage.stage, item.operation, _number(item.items), _hours(item.hours), item.figure)
    console.print(work)
    if plan.gpu_hours is None:
        unknown = sorted({w.operation for s in plan.stages for w in s.work if w.hours is None})
        console.print(
            f"Estimated GPU-hours left: [bold]unknown[/bold] (at least {_hours(plan.known_gpu_hours)}; "
            f"no input count or no figure for {', '.join(unknown)})"
        )
    else:
        wall = (
            f"; about {_hours(plan.gpu_hours / plan.gpus)} hours on its {plan.gpus} GPU workers"
            if plan.gpus
            else ""
        )
        console.print(f"Estimated GPU-hours left: [bold]{_hours(plan.gpu_hours)}[/bold]{wall}")
    for note in plan.notes:
        console.print(f"[yellow]Note:[/yellow] {note}")
