"""GPU throughput of every model of an IEIW build, each against a baseline measured in the same run.

No weights can be downloaded, so the real architectures are built with random weights (throughput
does not depend on the weights' values) and saved and loaded through the project's own loaders:

- **train**: Stable Diffusion 1.5's UNet (8 input channels) at 256 px, bf16, batch 64, from the latent
  cache, through the trainer's step (``bench/train_throughput.py``), against diffusers' plain loop
  (fp16 autocast, the VAE on the fly); images/s and MFU, beside MosaicML's published SD-2 UNet figure
  at 256 px with precomputed latents (about 137 images/s per A100);
- **pbe**: Paint-by-Example (UNet of SD 1.x's size with 9 input channels, SD's VAE, a CLIP ViT-L/14
  image encoder) through :class:`PaintByExamplePainter`: pairs/s at the default 50 PNDM steps, against
  which DPM-Solver++ at 20 steps is measured;
- **sam**: SAM ViT-H (``sam_model_registry["vit_h"]``, no checkpoint) through :class:`SamProposer`:
  images/s of automatic masks (32 x 32 points), against the image encoder alone;
- **clip**: open_clip ViT-L/14 (no pretrained tag) through :class:`ClipEmbedder`, the embedding stage
  (decode, preprocess, encode) on varied crops, against the model on ready tensors;
- **lama**: LaMa's crop-resize-batch path (:class:`LamaInpainter`, ``strategy: crop``) with a stand-in
  TorchScript module of LaMa's inputs and outputs (big-lama.pt cannot be downloaded): windows/s
  against whole images one at a time.

``--tiny`` builds small models of the same classes and runs on the CPU in a minute or two (a test runs
it, so the script never rots). ``--json FILE`` writes the figures; ``--table FILE`` merges them into
a throughput table (``flows/resources/throughputs.yaml``, read by ``ieiw build --plan``), each figure
with the device it was measured on. A section whose libraries are missing is skipped and says why.

    python bench/gpu_throughput.py                       # on a GPU: the real architectures
    python bench/gpu_throughput.py --tiny --json out.json --table flows/resources/throughputs.yaml
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench scripts share their helpers
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' tiny models, for --tiny
sys.path.insert(0, str(HERE.parent / "tests" / "replacement"))

MOSAIC_SD2_256_PER_A100 = 137.0  # images/s, MosaicML's SD-2 UNet training at 256 px, precomputed latents
SECTIONS = ("train", "pbe", "sam", "clip", "lama")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(work: Callable[[], int], device: torch.device, warmup: Callable[[], object] | None = None) -> float:
    """Items per second of ``work()`` (which returns how many items it did), after one warm-up call."""
    (warmup or work)()
    sync(device)
    started = time.perf_counter()
    items = work()
    sync(device)
    return items / (time.perf_counter() - started)


def figure(operation: str, unit: str, per_second: float, baseline: str, baseline_per_second: float, **params):
    return {
        "operation": operation,
        "unit": unit,
        "per_second": round(per_second, 3),
        "baseline": baseline,
        "baseline_per_second": round(baseline_per_second, 3),
        "ratio": round(per_second / baseline_per_second, 3) if baseline_per_second else None,
        "params": params,
    }


def vg_images(count: int, long_sides: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    """Images of Visual Genome-like sizes (smooth random content)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        long_side = int(rng.choice(long_sides))
        short_side = int(long_side * rng.uniform(0.56, 1.0))
        height, width = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
        base = rng.integers(0, 255, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
        out.append(np.asarray(Image.fromarray(base).resize((width, height), Image.BICUBIC)))
    return out


def box_mask(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    height, width = image.shape[:2]
    w, h = int(width * rng.uniform(0.15, 0.45)), int(height * rng.uniform(0.15, 0.45))
    x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    mask = np.zeros((height, width), bool)
    mask[y : y + h, x : x + w] = True
    return mask, (x, y, w, h)


# --------------------------------------------------------------------------------------- training


def bench_train(args, device: torch.device) -> list[dict]:
    import train_throughput as tt

    options = SimpleNamespace(
        tiny=args.tiny,
        batch_size=2 if args.tiny else 64,
        resolution=64 if args.tiny else 256,
        steps=2 if args.tiny else 10,
        warmup=1 if args.tiny else 3,
        compile=False,
    )
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = tt.char_tokenizer(Path(folder))
    images = options.batch_size * options.steps
    base_seconds = tt.baseline_loop(options, device, tokenizer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    our_seconds, unet = tt.our_loop(options, device, tokenizer)
    flops = tt.unet_train_flops(
        unet, options.batch_size, options.resolution // 8, unet.config.cross_attention_dim, device
    )
    peak = tt.peak_flops(device, args.peak_tflops)
    ours = images / our_seconds
    mfu = round(100 * flops / options.batch_size * ours / peak, 2) if peak else None
    print(
        f"  MFU {mfu if mfu is not None else 'n/a'}%; MosaicML's SD-2 UNet at 256 px, precomputed latents: "
        f"~{MOSAIC_SD2_256_PER_A100:.0f} images/s per A100 (ours here: {ours:.1f} images/s per GPU)"
    )
    return [
        figure(
            "train_images_256",
            "images/s",
            ours,
            "diffusers' plain loop (fp16 autocast, VAE on the fly)",
            images / base_seconds,
            batch=options.batch_size,
            resolution=options.resolution,
            precision="bf16" if device.type == "cuda" else "fp32",
            mfu_percent=mfu,
            mosaicml_sd2_256_per_a100=MOSAIC_SD2_256_PER_A100,
        )
    ]


# --------------------------------------------------------------------------------- Paint-by-Example


def paint_by_example_folder(folder: Path, tiny: bool, device: torch.device) -> Path:
    """A Paint-by-Example pipeline of the published sizes (random weights), saved as the hub's is."""
    if tiny:
        from replacement_tiny_models import tiny_paint_by_example

        return tiny_paint_by_example(folder)
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example import (
        PaintByExampleImageEncoder,
        PaintByExamplePipeline,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    with torch.device(device):  # random initialisation on the GPU: seconds instead of minutes
        unet = UNet2DConditionModel(sample_size=64, in_channels=9, out_channels=4, cross_attention_dim=768)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=768,
        )
        encoder = PaintByExampleImageEncoder(vision, proj_size=768)
    pipe = PaintByExamplePipeline(
        vae=vae,
        image_encoder=encoder,
        unet=unet,
        scheduler=PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True
        ),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 224}, crop_size=224),
        requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(folder)
    del pipe, unet, vae, encoder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return folder


def bench_pbe(args, device: torch.device) -> list[dict]:
    from diffusers import DPMSolverMultistepScheduler

    from ieiw.pipelines.replacement.paint_by_example import PaintByExamplePainter
    from ieiw.pipelines.replacement.painting import PaintConfig, PaintJob

    steps, fast_steps = (6, 3) if args.tiny else (50, 20)
    batch, count = (2, 4) if args.tiny else (8, 16)
    with tempfile.TemporaryDirectory() as folder:
        model = paint_by_example_folder(Path(folder) / "paint-by-example", args.tiny, device)
        config = PaintConfig(
            backend="paint_by_example",
            model=str(model),
            device=str(device),
            resolution=32 if args.tiny else 512,
            steps=steps,
            batch_size=batch,
        )
        painter = PaintByExamplePainter(config)
    rng = np.random.default_rng(1)
    jobs = []
    for image in vg_images(count, (96, 128) if args.tiny else (500, 640, 800)):
        mask, box = box_mask(image, rng)
        reference = vg_images(1, (48,) if args.tiny else (224,), seed=int(rng.integers(1 << 30)))[0]
        jobs.append(PaintJob(image, mask, box, reference, np.ones(reference.shape[:2], bool), 0))
    default = rate(lambda: len(painter.paint(jobs)), device, lambda: painter.paint(jobs[:batch]))
    painter.pipe.scheduler = DPMSolverMultistepScheduler.from_config(painter.pipe.scheduler.config)
    painter.config = config.model_copy(update={"steps": fast_steps})
    fast = rate(lambda: len(painter.paint(jobs)), device, lambda: painter.paint(jobs[:batch]))
    common = {"batch": batch, "resolution": config.resolution, "precision": str(painter.dtype)}
    return [
        figure(
            "pbe_pairs",
            "pairs/s",
            default,
            "itself (the default)",
            default,
            steps=steps,
            scheduler="PNDM",
            **common,
        ),
        figure(
            "pbe_pairs_fast",
            "pairs/s",
            fast,
            f"PNDM at {steps} steps (the default)",
            default,
            steps=fast_steps,
            scheduler="DPMSolverMultistep",
            **common,
        ),
    ]


# ----------------------------------------------------------------------------------------------- SAM


def bench_sam(args, device: torch.device) -> list[dict]:
    from ieiw.pipelines.replacement.sam import SamConfig, SamProposer, build_custom_sam

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = os.path.join(folder, "sam.pth")
        if args.tiny:
            from replacement_tiny_models import SAM_ARCH

            torch.save(build_custom_sam(SAM_ARCH).state_dict(), checkpoint)
            config = SamConfig(
                checkpoint=checkpoint, model_type="custom", architecture=SAM_ARCH, points_per_side=4
            )
        else:
            from segment_anything import sam_model_registry

            torch.save(sam_model_registry["vit_h"](checkpoint=None).state_dict(), checkpoint)
            config = SamConfig(checkpoint=checkpoint, model_type="vit_h")
        proposer = SamProposer(config.model_copy(update={"device": str(device)}))
    images = vg_images(2 if args.tiny else 8, (128,) if args.tiny else (1024,))

    def masks() -> int:
        for image in images:
            proposer.propose(image)
        return len(images)

    def encoder() -> int:
        for image in images:
            proposer.generator.predictor.set_image(image)
        return len(images)

    return [
        figure(
            "sam_images",
            "images/s",
            rate(masks, device, lambda: proposer.propose(images[0])),
            "the image encoder alone",
            rate(encoder, device),
            model=config.model_type,
            points_per_side=config.points_per_side,
            image_long_side=max(images[0].shape[:2]),
        )
    ]


# ---------------------------------------------------------------------------------------------- CLIP


def bench_clip(args, device: torch.device) -> list[dict]:
    from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig

    with tempfile.TemporaryDirectory() as folder:
        if args.tiny:
            from replacement_tiny_models import tiny_clip

            config = tiny_clip(Path(folder)).model_copy(update={"device": str(device), "batch_size": 32})
        else:
            config = EmbedderConfig(model="ViT-L-14", pretrained=None, device=str(device), batch_size=256)
        embedder = ClipEmbedder.from_config(config)
    rng = np.random.default_rng(2)
    crops = [
        rng.integers(0, 255, (int(rng.integers(64, 400)), int(rng.integers(64, 400)), 3), dtype=np.uint8)
        for _ in range(64 if args.tiny else 2048)
    ]
    from PIL import Image

    ready = torch.stack([embedder.preprocess(Image.fromarray(c)) for c in crops[: config.batch_size]])

    def raw() -> int:
        for _ in range(max(1, len(crops) // len(ready))):
            embedder._encode(embedder.model.encode_image, ready)
        return max(1, len(crops) // len(ready)) * len(ready)

    return [
        figure(
            "clip_images",
            "images/s",
            rate(lambda: len(embedder.embed_images(crops)), device, lambda: embedder.embed_images(crops[:8])),
            "the model on ready tensors",
            rate(raw, device),
            model=config.model,
            batch=config.batch_size,
            precision=str(embedder.autocast_dtype or "float32"),
        )
    ]


# ---------------------------------------------------------------------------------------------- LaMa


class LamaStandIn(torch.nn.Module):
    """big-lama.pt's call: ``forward(image, mask)``, RGB in [0, 1] and a binary mask, both padded to a
    multiple of 8, returning the inpainted RGB; a few convolutions instead of LaMa's network."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(4, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        predicted = torch.sigmoid(self.body(torch.cat([image * (1 - mask), mask], dim=1)))
        return predicted * mask + image * (1 - mask)


def bench_lama(args, device: torch.device) -> list[dict]:
    from ieiw.pipelines.inpaint.lama import LamaInpainter

    window, batch = (64, 4) if args.tiny else (512, 16)
    images = vg_images(12 if args.tiny else 64, (96, 128, 160) if args.tiny else (500, 640, 800, 1024))
    rng = np.random.default_rng(3)
    masks = [box_mask(image, rng)[0].astype(np.uint8) * 255 for image in images]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "lama-stand-in.pt")
        torch.jit.script(LamaStandIn(8 if args.tiny else 64)).save(path)
        crop = LamaInpainter(path, device=str(device), batch_size=batch, strategy="crop", window=window)
        whole = LamaInpainter(path, device=str(device), batch_size=1)
    return [
        figure(
            "lama_windows",
            "windows/s",
            rate(
                lambda: len(crop.inpaint(images, masks)),
                device,
                lambda: crop.inpaint(images[:batch], masks[:batch]),
            ),
            "whole images, one at a time",
            rate(
                lambda: len(whole.inpaint(images, masks)),
                device,
                lambda: whole.inpaint(images[:1], masks[:1]),
            ),
            window=window,
            batch=batch,
            module="stand-in of LaMa's inputs and outputs (not big-lama's network)",
        )
    ]


BENCHES = {"train": bench_train, "pbe": bench_pbe, "sam": bench_sam, "clip": bench_clip, "lama": bench_lama}


# ------------------------------------------------------------------------------------ the table


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def merge_table(path: Path, figures: list[dict], device: str, tiny: bool) -> None:
    """Put the figures into the throughput table, replacing those of the same operation measured on
    the same device the same way (tiny or not)."""
    import yaml

    table = yaml.safe_load(path.read_text()) if path.exists() else None
    table = table or {"figures": []}
    kept = [
        f
        for f in table.get("figures", [])
        if not any(
            f["operation"] == n["operation"] and f.get("device") == device and bool(f.get("tiny")) == tiny
            for n in figures
        )
    ]
    today = datetime.date.today().isoformat()
    measured = "bench/gpu_throughput.py" + (" --tiny" if tiny else "")
    for new in figures:
        kept.append(
            {
                "operation": new["operation"],
                "unit": new["unit"],
                "per_second": new["per_second"],
                "device": device,
                "tiny": tiny,
                "measured_with": measured,
                "date": today,
                "params": new["params"],
            }
        )
    table["figures"] = sorted(kept, key=lambda f: (f["operation"], bool(f.get("tiny")), f["device"]))
    header = path.read_text().split("\nfigures:")[0] if path.exists() else ""
    body = yaml.safe_dump({"figures": table["figures"]}, sort_keys=False, width=110)
    path.write_text((header.rstrip() + "\n" if header.strip() else "") + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small models of the same classes, on the CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--table", type=Path, default=None, help="merge the figures into this table")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    auto = args.device == "auto"
    device = torch.device(
        ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu") if auto else args.device
    )
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    name = device_name(device)
    print(
        f"device: {name}; {'tiny models of the same classes' if args.tiny else 'real architectures'}, random weights"
    )
    figures, skipped = [], {}
    for section in [s.strip() for s in args.only.split(",") if s.strip()]:
        started = time.perf_counter()
        try:
            found = BENCHES[section](args, device)
        except ImportError as error:  # a library this section needs is not installed here
            skipped[section] = f"needs {error.name or error}"
            print(f"{section}: skipped ({skipped[section]})")
            continue
        except Exception as error:  # one broken section must not hide the others' figures
            skipped[section] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
            print(f"{section}: failed ({skipped[section]})")
            continue
        for f in found:
            print(
                f"{f['operation']:18s} {f['per_second']:10.2f} {f['unit']:10s} baseline ({f['baseline']}) "
                f"{f['baseline_per_second']:.2f}: ratio {f['ratio']}x   {json.dumps(f['params'])}"
            )
        print(f"  ({section}: {time.perf_counter() - started:.0f} s)")
        figures.extend(found)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = {"device": name, "tiny": args.tiny, "figures": figures, "skipped": skipped}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.table and figures:
        merge_table(args.table, figures, name, args.tiny)
        print(f"merged {len(figures)} figures into {args.table}")
    sys.exit(1 if skipped and not figures else 0)


if __name__ == "__main__":
    main()
