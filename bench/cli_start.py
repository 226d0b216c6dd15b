"""How long the command line takes to answer: ``ieiw --help`` and ``ieiw inspect`` on a small stage,
against ``python -c pass`` (the interpreter's own start), timed as whole processes over several runs in
one run. Goals on a 2-core machine: ``--help`` under 1 s, ``inspect`` under 1.5 s.

    python bench/cli_start.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fixture writer


def timed(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def small_stage(root: Path) -> str:
    """A committed removal stage of 16 samples (OpenCV), made without a server."""
    from phrasecut_fixture import write_phrasecut

    from ieiw.pipelines.removal import RemovalConfig, RemovalStage
    from ieiw.storage.runner import ThreadExecutor, run_stage

    annotations, images = write_phrasecut(str(root / "data"), n_images=4, size=96)
    config = RemovalConfig.model_validate({"source": {"annotations": [annotations], "images": images}})
    stage = RemovalStage(config, str(root / "build" / "removal"))
    with ThreadExecutor(1) as executor:
        run_stage(stage, executor)
    return stage.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    ieiw = str(Path(sys.executable).with_name("ieiw"))
    with tempfile.TemporaryDirectory(prefix="ieiw-cli-") as tmp:
        stage = small_stage(Path(tmp))
        baseline = timed([sys.executable, "-c", "pass"], args.runs)
        rows = {
            "ieiw --help": timed([ieiw, "--help"], args.runs),
            "ieiw inspect STAGE": timed([ieiw, "inspect", stage], args.runs),
        }
    base = statistics.median(baseline)
    spread = f"min {min(baseline):.3f}, max {max(baseline):.3f}"
    print(f"python -c pass: median {base:.3f} s ({spread}), {args.runs} runs")
    goals = {"ieiw --help": 1.0, "ieiw inspect STAGE": 1.5}
    for name, times in rows.items():
        median = statistics.median(times)
        print(
            f"{name}: median {median:.3f} s (min {min(times):.3f}, max {max(times):.3f}); "
            f"{median / base:.1f}x python's start; goal under {goals[name]} s: "
            f"{'met' if median < goals[name] else 'not met'}"
        )


if __name__ == "__main__":
    main()
