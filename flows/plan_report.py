"""The plan of :mod:`ieiw.flows.plan` as tables a person reads on a rich console."""

from __future__ import annotations

from ieiw.flows.plan import Plan, StagePlan


def _hours(value: float | None) -> str:
    """Hours as a person reads them: two decimals, or two significant digits below 0.01."""
    if value is None:
        return "?"
    return f"{value:,.2f}" if value == 0 or value >= 0.01 else f"{value:.2g}"


def _stage_hours(stage: StagePlan) -> str:
    return "no GPU work" if not stage.work else _hours(stage.gpu_hours)


def _count(value: int | None) -> str:
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
            f"{_count(stage.inputs)} {stage.unit}",
            _count(stage.committed or 0),
            stage.state,
            _stage_hours(stage),
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
            work.add_row(stage.stage, item.operation, _count(item.items), _hours(item.hours), item.figure)
    console.print(work)
    wall = (
        f"; about {_hours(plan.gpu_hours / plan.gpus)} hours on its {plan.gpus} GPU workers"
        if plan.gpus
        else ""
    )
    unknown = sorted({w.operation for stage in plan.stages for w in stage.work if w.hours is None})
    missing = f" (not counting {', '.join(unknown)}: no input count or no figure)" if unknown else ""
    console.print(f"Estimated GPU-hours left: [bold]{_hours(plan.gpu_hours)}[/bold]{wall}{missing}")
    for note in plan.notes:
        console.print(f"[yellow]Note:[/yellow] {note}")
