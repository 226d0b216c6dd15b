"""Speedup of a CPU-bound build stage with two worker processes instead of one.

Runs the same removal build (OpenCV inpainting, photo crops, PhraseCut format) through the `removal`
flow with a Dask task runner of 1 worker process and of 2, on the same input, in one run, against a
temporary Prefect server, and prints the speedup (goal on a 2-core machine: >= 1.6).

    python bench/scale.py [--images 96] [--size 512] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")

from removal_overhead import make_dataset  # noqa: E402  (bench scripts share their data maker)


def run(config, output: str, workers: int) -> float:
    from ieiw.flows.config import RunnerConfig
    from ieiw.flows.removal import removal
    from ieiw.flows.runners import make_task_runner

    runner = RunnerConfig(task_runner="dask", max_workers=workers, max_in_flight=2 * workers)
    started = time.perf_counter()
    summary = removal.with_options(task_runner=make_task_runner(runner))(config, output, None, runner)
    elapsed = time.perf_counter() - started
    assert summary["kept"] > 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from ieiw.flows.config import RemovalConfig

    with tempfile.TemporaryDirectory() as root, prefect_test_harness(server_startup_timeout=120):
        annotations, images = make_dataset(root, args.images, size=args.size)
        config = RemovalConfig.model_validate(
            {
                "source": {"annotations": [annotations], "images": images},
                "batch_size": args.batch_size,
                "dilation": 25,
                "inpaint": {"opencv_radius": 9},
            }
        )
        one, two = [], []
        for index in range(args.rounds):
            one.append(run(config, os.path.join(root, f"one-{index}"), 1))
            two.append(run(config, os.path.join(root, f"two-{index}"), 2))
        t1, t2 = statistics.median(one), statistics.median(two)
        print(
            f"removal stage, {args.images} images of {args.size}px, batch {args.batch_size}, Dask processes"
        )
        print(f"1 worker process:  {t1:.2f} s  ({args.images / t1:.2f} images/s)  runs {one}")
        print(f"2 worker processes: {t2:.2f} s  ({args.images / t2:.2f} images/s)  runs {two}")
        print(f"speedup = {t1 / t2:.2f}  (goal >= 1.6 on 2 cores; {os.cpu_count()} cores here)")


if __name__ == "__main__":
    main()
