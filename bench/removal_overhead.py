"""What the Prefect flow costs on top of the removal work itself.

Runs the same removal work (N images, OpenCV backend, same batches) twice per round, in one
process: once by calling the stage and commit functions directly, once through the `removal` flow
against a temporary Prefect server. Prints both times and the ratio (goal: flow <= 1.10 x direct).

    python bench/removal_overhead.py [--images 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TQDM_DISABLE", "1")


def make_dataset(root: str, count: int, size: int = 256, seed: int = 0) -> tuple[str, str]:
    """Crops of the bundled photographs with one random polygon each, in PhraseCut format."""
    from ieiw.pipelines.sources.demo import DEMO_IMAGES, demo_photo

    rng = np.random.default_rng(seed)
    photos = [_at_least(demo_photo(name), size + 1) for name in DEMO_IMAGES.values()]
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    tasks = []
    for image_id in range(1, count + 1):
        photo = photos[image_id % len(photos)]
        y = rng.integers(0, photo.shape[0] - size)
        x = rng.integers(0, photo.shape[1] - size)
        Image.fromarray(photo[y : y + size, x : x + size]).save(
            os.path.join(image_dir, f"{image_id}.jpg"), quality=92
        )
        cx, cy = rng.uniform(0.3 * size, 0.7 * size), rng.uniform(0.3 * size, 0.7 * size)
        r = rng.uniform(0.08 * size, 0.18 * size)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radii = r * rng.uniform(0.6, 1.0, 12)
        polygon = [[float(cx + a * np.cos(t)), float(cy + a * np.sin(t))] for t, a in zip(angles, radii)]
        tasks.append(
            {
                "task_id": f"{image_id}__0",
                "image_id": image_id,
                "phrase": "object",
                "Polygons": [[polygon]],
                "instance_boxes": [],
                "phrase_structure": {},
            }
        )
    path = os.path.join(root, "refer_bench.json")
    with open(path, "w") as handle:
        json.dump(tasks, handle)
    return path, image_dir


def _at_least(photo: np.ndarray, side: int) -> np.ndarray:
    """Upscale ``photo`` so both sides are at least ``side`` pixels."""
    scale = max(1.0, side / min(photo.shape[:2]))
    if scale == 1.0:
        return photo
    height, width = (int(round(d * scale)) for d in photo.shape[:2])
    return np.asarray(Image.fromarray(photo).resize((width, height), Image.BICUBIC))


def direct(config, output: str) -> float:
    from ieiw.pipelines.inpaint import build_inpainter
    from ieiw.pipelines.removal import removal_stage
    from ieiw.pipelines.sources.phrasecut import iter_records
    from ieiw.storage.commit import batch_name, commit_batch

    started = time.perf_counter()
    inpainter = build_inpainter(config.inpaint)
    records = iter_records(config.source.annotations[0], config.source.images)
    while batch := list(itertools.islice(records, config.batch_size)):
        name = batch_name("removal", [r.record_id for r in batch])
        commit_batch(removal_stage(batch, inpainter, config.settings()), output + "/removal", name)
    return time.perf_counter() - started


def through_flow(config, output: str) -> float:
    from ieiw.flows.config import RunnerConfig
    from ieiw.flows.stage_flow import run_stage_flow
    from ieiw.pipelines.removal import RemovalStage
    from ieiw.storage.runner import forget_models

    forget_models()
    runner = RunnerConfig(task_runner="threads", max_workers=1, max_in_flight=2)
    started = time.perf_counter()
    run_stage_flow(RemovalStage(config, output + "/removal"), runner)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from ieiw.pipelines.removal import RemovalConfig

    with tempfile.TemporaryDirectory() as root, prefect_test_harness(server_startup_timeout=120):
        annotations, images = make_dataset(root, args.images)
        config = RemovalConfig.model_validate(
            {
                "source": {"annotations": [annotations], "images": images},
                "batch_size": args.batch_size,
                "dilation": 9,
            }
        )
        through_flow(config, os.path.join(root, "warmup"))  # first flow run pays server warm-up
        direct_times, flow_times = [], []
        for round_index in range(args.rounds):
            direct_times.append(direct(config, os.path.join(root, f"direct-{round_index}")))
            flow_times.append(through_flow(config, os.path.join(root, f"flow-{round_index}")))
        d, f = statistics.median(direct_times), statistics.median(flow_times)
        print(f"images: {args.images}, batch size: {args.batch_size}, rounds: {args.rounds}, backend: opencv")
        print(f"direct stage calls: median {d:.2f} s  ({args.images / d:.1f} images/s)  runs {direct_times}")
        print(f"removal flow:       median {f:.2f} s  ({args.images / f:.1f} images/s)  runs {flow_times}")
        print(f"flow / direct = {f / d:.3f}  (goal <= 1.10)")


if __name__ == "__main__":
    main()
