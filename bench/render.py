"""Benchmark: multi-task rendering against the floor of decoding and re-encoding the same images.

Writes a small dataset per task in its real on-disk format (COCO keypoints, COCO-Stuff label
maps, a folder of clean photos for synthetic degradations), all JPEG photos of ``--size``, then
times, per task and in one run:

- the floor: decode every input (image, plus the label map for segmentation), take the same
  square (the person's crop for keypoints) and resize it to the build resolution, and encode
  the tar members a sample has (source and target, plus the mask for segmentation) as the
  shard writer does;
- rendering: the production readers and stage (:func:`ieiw.pipelines.multitask.stage.multitask_stage`)
  and the same encoding of the samples they return.

Printed: pairs per second of each and the ratio rendering / floor (goal: >= 0.7, since rendering
should cost little next to image I/O).

    python bench/render.py            # 96 photos of 640x480 per task
    python bench/render.py --quick    # 24 per task
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from ieiw.pipelines.multitask.config import (
    CocoKeypointSource,
    CocoStuffSource,
    EnhancementConfig,
    KeypointConfig,
    MultitaskConfig,
    SegmentationConfig,
    SyntheticSource,
)
from ieiw.pipelines.multitask.keypoint_sources import COCO_JOINTS
from ieiw.pipelines.multitask.render import load_rgb, resize_square, window_around_box, window_around_mask
from ieiw.pipelines.multitask.stage import iter_multitask_records, multitask_stage
from ieiw.storage.images import encode_image
from ieiw.storage.schema import Drop, Sample
from ieiw.storage.shards import ShardSpec, encode_sample


def photo(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A photo-like image: smooth random colour fields plus sensor-like noise."""
    small = rng.integers(0, 256, (height // 32 + 2, width // 32 + 2, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def write_dataset(root: str, n: int, width: int, height: int, seed: int) -> MultitaskConfig:
    rng = np.random.default_rng(seed)
    images_dir = os.path.join(root, "images", "val2017")
    labels_dir = os.path.join(root, "annotations", "val2017")
    os.makedirs(images_dir)
    os.makedirs(labels_dir)
    images, annotations = [], []
    for image_id in range(1, n + 1):
        name = f"{image_id:012d}"
        Image.fromarray(photo(width, height, rng)).save(os.path.join(images_dir, f"{name}.jpg"), quality=90)
        labels = np.full((height, width), 255, np.uint8)
        for label in rng.choice(20, 3, replace=False):
            x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            labels[y0 : y0 + height // 3, x0 : x0 + width // 3] = label
        Image.fromarray(labels).save(os.path.join(labels_dir, f"{name}.png"))
        bw, bh = width * 0.3, height * 0.8
        bx, by = float(rng.uniform(0, width - bw)), float(rng.uniform(0, height - bh))
        points = []
        for _ in COCO_JOINTS:
            points += [
                round(bx + float(rng.uniform(0.05, 0.95)) * bw, 1),
                round(by + float(rng.uniform(0.05, 0.95)) * bh, 1),
                2,
            ]
        images.append({"id": image_id, "file_name": f"{name}.jpg", "width": width, "height": height})
        annotations.append(
            {
                "id": image_id,
                "image_id": image_id,
                "category_id": 1,
                "iscrowd": 0,
                "keypoints": points,
                "num_keypoints": 17,
                "bbox": [bx, by, bw, bh],
                "area": 0.6 * bw * bh,
            }
        )
    keypoints = os.path.join(root, "person_keypoints_val2017.json")
    with open(keypoints, "w") as handle:
        json.dump(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "person", "keypoints": COCO_JOINTS, "skeleton": []}],
            },
            handle,
        )
    labels_file = os.path.join(root, "labels.txt")
    with open(labels_file, "w") as handle:
        handle.write("".join(f"{i}: class{i}\n" for i in range(20)))
    return MultitaskConfig(
        keypoints=KeypointConfig(sources=[CocoKeypointSource(annotations=keypoints, images=images_dir)]),
        segmentation=SegmentationConfig(
            sources=[CocoStuffSource(root=root, split="val2017", labels=labels_file)], negative_share=0.0
        ),
        enhancement=EnhancementConfig(sources=[SyntheticSource(images=images_dir)]),
    )


def only(config: MultitaskConfig, task: str, resolution: int) -> MultitaskConfig:
    return config.model_copy(
        update={
            "resolution": resolution,
            **{t: None for t in ("keypoints", "segmentation", "enhancement") if t != task},
        }
    )


def floor(records: list, resolution: int, spec: ShardSpec) -> int:
    """Decode each record's inputs, square and resize, encode source, target (and mask): no rendering."""
    members = 0
    for record in records:
        image = load_rgb(record.image_path)
        if hasattr(record, "box"):  # the person's crop, as the keypoint renderer takes it
            window = window_around_box(record.box, KeypointConfig().crop_margin, resolution)
        else:
            window = window_around_mask(np.zeros(image.shape[:2], np.uint8), resolution)
        square = window.apply(image)
        members += len(encode_image(square, spec.image_format)) + len(encode_image(square, spec.image_format))
        label_path = getattr(record, "label_path", None)
        if label_path:
            with Image.open(label_path) as labels:
                labels.load()
                mask = resize_square(np.asarray(labels), resolution, nearest=True)
            members += len(encode_image(mask, "png"))
    return members


def render(records: list, config: MultitaskConfig, spec: ShardSpec) -> tuple[int, int]:
    samples = [r for r in multitask_stage(records, config) if isinstance(r, Sample)]
    return len(samples), sum(len(v) for s in samples for v in encode_sample(s, spec).values())


def run(args: argparse.Namespace) -> dict[str, float]:
    spec = ShardSpec()
    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir) as root:
        config = write_dataset(root, args.n, args.size[0], args.size[1], args.seed)
        for task in ("keypoints", "segmentation", "enhancement"):
            task_config = only(config, task, args.resolution)
            records = [r for r in iter_multitask_records(task_config) if not isinstance(r, Drop)]
            render(records[:2], task_config, spec)  # warm caches and imports outside the timings
            floor_times, render_times, made = [], [], 0
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                started = time.perf_counter()
                floor(records, args.resolution, spec)
                floor_times.append(time.perf_counter() - started)
                started = time.perf_counter()
                made, _ = render(records, task_config, spec)
                render_times.append(time.perf_counter() - started)
            floor_rate = len(records) / min(floor_times)
            render_rate = made / min(render_times)
            ratios[task] = render_rate / floor_rate
            print(
                f"{task:13s} floor (decode + square + encode): {floor_rate:7.1f} pairs/s | "
                f"render: {render_rate:7.1f} pairs/s ({made}/{len(records)} records made samples) | "
                f"ratio {ratios[task]:.2f}"
            )
    worst = min(ratios.values())
    print(
        f"ratio render/floor, worst task: {worst:.2f} (goal >= 0.7): {'OK' if worst >= 0.7 else 'BELOW GOAL'}"
    )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=96, help="photos per task")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timings of each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--quick", action="store_true", help="24 photos per task, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 24, 2
    run(args)


if __name__ == "__main__":
    main()
