"""LaMa's crop-and-batch path against one image at a time, on Visual Genome-sized images, in one run.

200 images of varied sizes (Visual Genome's: long side 500 to 1024 px, aspect 0.56 to 1), each with
a phrase-sized mask (2 to 25 % of the image), through the tiny TorchScript LaMa of the tests (saved
and loaded the way ``big-lama.pt`` is), three ways:

- baseline: ``strategy: whole``, ``batch_size: 1``: each image at its own padded size, one call each
  (what varied sizes came to before: only equal padded sizes could share a batch);
- whole, batched: ``strategy: whole``, ``batch_size: 8`` (batches only among equal padded sizes);
- crop and batch: ``strategy: crop`` (a square window around the mask grown by ``--margin``, resized
  to ``--window``), ``batch_size: 8`` windows of any images per call.

Prints images/s of each and the ratio of crop-and-batch to the baseline, and checks that no pixel
outside a mask changed. The tiny model's compute is small, so this measures the path (cutting,
resizing, batching, pasting back) more than the network; on a GPU with the real model the batching
is what pays.

    python bench/lama_batching.py [--images 200] [--window 512] [--margin 128] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from tiny_lama import save_tiny_lama  # noqa: E402  (the tests' tiny TorchScript LaMa)

from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter  # noqa: E402

LONG_SIDES = (500, 640, 800, 1024)


def visual_genome_like(count: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images of Visual Genome's sizes with one elliptic phrase mask each."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(count):
        long_side = int(rng.choice(LONG_SIDES))
        short_side = int(long_side * rng.uniform(0.56, 1.0))
        height, width = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
        base = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
        mask = np.zeros((height, width), np.uint8)
        area = rng.uniform(0.02, 0.25) * height * width
        ry = np.sqrt(area / np.pi / rng.uniform(0.5, 2.0))
        rx = area / np.pi / ry
        centre = (int(rng.uniform(0.2, 0.8) * width), int(rng.uniform(0.2, 0.8) * height))
        cv2.ellipse(mask, centre, (int(rx), int(ry)), 0, 0, 360, 255, -1)
        images.append(image)
        masks.append(mask)
    return images, masks


def run(inpainter, images, masks, chunk: int) -> tuple[float, list[np.ndarray]]:
    """Seconds to inpaint everything, fed to the inpainter ``chunk`` images at a time (a stage batch)."""
    out: list[np.ndarray] = []
    started = time.perf_counter()
    for start in range(0, len(images), chunk):
        out.extend(inpainter.inpaint(images[start : start + chunk], masks[start : start + chunk]))
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--margin", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--stage-batch", type=int, default=64, help="images per stage batch (removal.batch_size)"
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", FutureWarning)
    images, masks = visual_genome_like(args.images)
    sizes = {image.shape[:2] for image in images}
    with tempfile.TemporaryDirectory() as folder:
        model = save_tiny_lama(os.path.join(folder, "big-lama.pt"))
        ways = {
            "baseline: whole image, one at a time": InpaintConfig(backend="lama", model=model, batch_size=1),
            f"whole image, batches of {args.batch_size} (equal sizes only)": InpaintConfig(
                backend="lama", model=model, batch_size=args.batch_size
            ),
            f"crop {args.window}px, margin {args.margin}, batches of {args.batch_size}": InpaintConfig(
                backend="lama",
                model=model,
                batch_size=args.batch_size,
                strategy="crop",
                window=args.window,
                crop_margin=args.margin,
            ),
        }
        inpainters = {label: build_inpainter(config) for label, config in ways.items()}
        run(next(iter(inpainters.values())), images[:4], masks[:4], 4)  # warm-up
        seconds = {}
        for label, inpainter in inpainters.items():
            seconds[label], outputs = run(inpainter, images, masks, args.stage_batch)
            for image, mask, out in zip(images, masks, outputs, strict=True):
                assert out.shape == image.shape and np.array_equal(out[mask == 0], image[mask == 0]), label
    pixels = sum(i.shape[0] * i.shape[1] for i in images) / len(images)
    print(
        f"{args.images} images in {len(sizes)} sizes (mean {pixels / 1e3:.0f} kpx), tiny TorchScript LaMa, "
        f"CPU ({args.threads} threads)"
    )
    for label, value in seconds.items():
        print(f"  {label:58s} {args.images / value:8.1f} images/s")
    baseline, crop = list(seconds.values())[0], list(seconds.values())[-1]
    print(f"ratio crop-and-batch / one at a time: {baseline / crop:.2f}x")


if __name__ == "__main__":
    main()
