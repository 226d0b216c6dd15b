"""Speedup of CPU-bound build stages with two Dask worker processes instead of one.

Runs the same stage on the same input through the one runner (``run_stage_flow``, as the build runs it)
on the build's Dask cluster (``build_task_runner``: started once per build) of 1 worker process and of
2, in one run, against a temporary Prefect server, and prints each speedup (goal on a 2-core machine:
>= 1.6), and apart what a build pays once: starting the cluster and the workers' first imports:

- removal: OpenCV inpainting of photo crops in PhraseCut format;
- score: the tiny CLIP and aesthetic head of the tests over the removal stage's candidates.

It also prints, per worker count, where the wall time went: the busiest worker's compute seconds (its
batches' own time) against the wall time, i.e. how long the workers waited for work.

    python bench/scale.py [--images 96] [--size 512] [--rounds 1] [--stages removal score]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "model"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")

from removal_overhead import make_dataset  # noqa: E402  (bench scripts share their data maker)


def runner_config(workers: int):
    from ieiw.flows.config import RunnerConfig

    return RunnerConfig(task_runner="dask", max_workers=workers, max_in_flight=2 * workers, gpus="none")


def run(stage, workers: int, task_runner=None) -> tuple[float, float]:
    """(wall seconds, compute seconds of all batches) of one run of ``stage`` on ``workers`` processes:
    on the build's cluster ``task_runner`` (started once per build), or on a cluster of its own."""
    from ieiw.flows.stage_flow import run_stage_flow

    started = time.perf_counter()
    summary = run_stage_flow(stage, runner_config(workers), task_runner=task_runner)
    elapsed = time.perf_counter() - started
    assert summary.kept > 0 or summary.rows > 0, summary
    return elapsed, summary.compute_seconds


def removal_stage(root: str, args, name: str):
    from ieiw.pipelines.removal import RemovalConfig, RemovalStage

    annotations, images = os.path.join(root, "refer_bench.json"), os.path.join(root, "images")
    config = RemovalConfig.model_validate(
        {
            "source": {"annotations": [annotations], "images": images},
            "batch_size": args.batch_size,
            "dilation": 25,
            "inpaint": {"opencv_radius": 9},
        }
    )
    return RemovalStage(config, os.path.join(root, name, "removal"))


def score_stage(root: str, args, name: str, candidates: str):
    from tiny_clip import save_tiny_clip

    from ieiw.quality.aesthetic import AestheticPredictor
    from ieiw.quality.config import QualityConfig
    from ieiw.quality.scoring import ScoreStage
    from ieiw.storage.layout import BuildLayout

    models = Path(root) / "models"
    if not (models / "aesthetic.pth").exists():
        import torch

        save_tiny_clip(models)
        torch.save(AestheticPredictor(input_dim=32).state_dict(), models / "aesthetic.pth")
    model, config_file, weights = save_tiny_clip(models)
    quality = QualityConfig.model_validate(
        {
            "scoring": {
                "embedder": {"model": model, "pretrained": weights, "model_config_file": config_file},
                "aesthetic_checkpoint": str(models / "aesthetic.pth"),
                "batch_size": 16,
            }
        }
    )
    layout = BuildLayout(os.path.join(root, name))
    return ScoreStage(quality, candidates, layout.scores("removal"), layout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--stages", nargs="+", default=["removal", "score"])
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from ieiw.flows.runners import build_task_runner

    with tempfile.TemporaryDirectory() as root, prefect_test_harness(server_startup_timeout=120):
        make_dataset(root, args.images, size=args.size)
        candidates = removal_stage(root, args, "candidates")
        run(candidates, 2)  # the score stage's input, made once
        warm_root = os.path.join(root, "warm")
        make_dataset(warm_root, 8, size=args.size)
        times: dict[str, dict[int, list[tuple[float, float]]]] = {k: {1: [], 2: []} for k in args.stages}
        starts: dict[int, float] = {}
        for workers in (1, 2):
            started = time.perf_counter()
            with build_task_runner(runner_config(workers)) as task_runner:
                # what a build pays once: the cluster, the workers' imports (a first small stage)
                run(removal_stage(warm_root, args, f"warm-{workers}"), workers, task_runner)
                starts[workers] = time.perf_counter() - started
                for index in range(args.rounds):
                    for kind in args.stages:
                        name = f"{kind}-{workers}-{index}"
                        stage = (
                            removal_stage(root, args, name)
                            if kind == "removal"
                            else score_stage(root, args, name, candidates.url)
                        )
                        times[kind][workers].append(run(stage, workers, task_runner))
        print(
            "once per build: the cluster and the workers' first imports (a first small stage): "
            + ", ".join(f"{w} worker(s) {s:.2f} s" for w, s in starts.items())
        )
        for kind in args.stages:
            t1 = statistics.median(t for t, _ in times[kind][1])
            t2 = statistics.median(t for t, _ in times[kind][2])
            print(f"{kind} stage, {args.images} images of {args.size}px, batch {args.batch_size}")
            for workers, runs in times[kind].items():
                wall = statistics.median(t for t, _ in runs)
                compute = statistics.median(c for _, c in runs)
                waiting = max(0.0, 1 - compute / (workers * wall))
                print(
                    f"  {workers} worker process(es): {wall:.2f} s  ({args.images / wall:.2f} images/s); "
                    f"batches computed {compute:.2f} s, workers idle {100 * waiting:.0f}% of the wall time"
                )
            print(f"  speedup = {t1 / t2:.2f}  (goal >= 1.6 on 2 cores; {os.cpu_count()} cores here)")


if __name__ == "__main__":
    main()
