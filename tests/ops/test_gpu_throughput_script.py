"""``bench/gpu_throughput.py --tiny``: the GPU throughput script runs end to end on the CPU with small
models of the same classes (so it never rots while no GPU is at hand), prints every figure against
its baseline, and merges its figures, with their device, into a throughput table the plan reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ieiw.flows.plan import pick_figure, throughput_table
from ieiw.flows.resources import resource_path

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = {"train_images_256", "pbe_pairs", "pbe_pairs_fast", "sam_images", "clip_images", "lama_windows"}


def test_the_gpu_throughput_script_runs_tiny_on_the_cpu_and_fills_a_table(tmp_path):
    table = tmp_path / "throughputs.yaml"
    shutil.copy(resource_path("throughputs.yaml"), table)
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_throughput.py"),
            "--tiny",
            "--json",
            str(out),
            "--table",
            str(table),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["tiny"] and figures["device"].startswith("CPU") and figures["skipped"] == {}
    found = {f["operation"]: f for f in figures["figures"]}
    assert set(found) == OPERATIONS
    for name, entry in found.items():
        assert entry["per_second"] > 0 and entry["baseline_per_second"] > 0 and entry["ratio"] > 0, name
        assert f"{name} " in result.stdout and "baseline" in result.stdout
    assert found["pbe_pairs_fast"]["params"]["steps"] < found["pbe_pairs"]["params"]["steps"]
    assert "MosaicML" in result.stdout  # the published figure ours is reported beside

    merged = throughput_table(table)

    def measured_here(figure: dict) -> bool:  # by this script, on this device (other scripts add others)
        script = str(figure.get("measured_with", "")).startswith("bench/gpu_throughput.py")
        return figure["device"] == figures["device"] and figure["tiny"] and script

    mine = [f for f in merged if measured_here(f)]
    assert {f["operation"] for f in mine} == OPERATIONS  # replaced, not duplicated
    assert len(merged) == len(throughput_table()) - len(
        [f for f in throughput_table() if measured_here(f)]
    ) + len(OPERATIONS)
    assert table.read_text().startswith("# Measured throughputs")  # the table's header is kept
    assert pick_figure(merged, "lama_windows")["measured_with"] == "bench/gpu_throughput.py --tiny"


def test_the_library_paths_a_bare_gpu_machine_takes_run_too(tmp_path):
    """On a machine with only PyTorch and the model libraries the sections fall back to calling the
    libraries the way the project's classes do; ``--library`` takes those paths here, so they are
    tested as well."""
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_throughput.py"),
            "--tiny",
            "--library",
            "--only",
            "train,pbe,sam,clip",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = {f["operation"]: f for f in json.loads(out.read_text())["figures"]}
    assert set(figures) == OPERATIONS - {"lama_windows"}
    for name, entry in figures.items():
        assert entry["per_second"] > 0 and "asked by --library" in entry["params"]["path"], name
