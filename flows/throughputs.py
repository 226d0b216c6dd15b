"""The throughput table and the GPU-hours it gives: measured figures per operation (LaMa windows,
SAM images, CLIP embeddings, Paint-by-Example pairs), each with the device it was measured on, from
``flows/resources/throughputs.yaml`` (written by ``bench/gpu_throughput.py``). A figure measured with
``--tiny`` on a CPU is a placeholder, and every estimate made from one says so."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

THROUGHPUTS = "throughputs.yaml"


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
