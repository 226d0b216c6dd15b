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
        base="sd15",
        batch_size=2 if args.tiny else 64,
        resolution=64 if args.tiny else 256,
        steps=2 if args.tiny else 10,
        warmup=1 if args.tiny else 3,
        compile=False,
    )
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = tt.char_tokenizer(Path(folder))
    images = options.batch_size * options.steps
    try:
        project_path(args)
        base_seconds = tt.baseline_loop(options, device, tokenizer)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        our_seconds, models = tt.our_loop(options, device, tokenizer)
        unet = models.unet
        path = "ieiw.model.trainer.training_step"
    except ImportError as error:
        base_seconds = library_baseline_loop(options, device, tokenizer)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        our_seconds, unet = library_train_loop(options, device, tokenizer)
        path = f"the script's copy of the trainer's step ({missing(error)})"
    flops = unet_flops(unet, options.batch_size, options.resolution // 8, device)
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
            path=path,
        )
    ]


def unet_flops(unet, batch: int, latent: int, device: torch.device) -> float:
    """Training FLOPs of one batch: the forward counted by torch's flop counter, times 3."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 8, latent, latent, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    c = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t, c)
    return 3.0 * counter.get_total_flops()


def library_baseline_loop(options, device: torch.device, tokenizer) -> float:
    """diffusers' plain loop from the libraries alone: fp16 autocast with a gradient scaler, the VAE
    encoding source and target and the text encoder running every step."""
    import torch.nn.functional as F
    import train_throughput as tt
    from diffusers import DDPMScheduler

    unet, vae, (text_encoder,) = tt.model_parts("sd15", options.tiny)
    unet.to(device).train()
    vae.to(device).requires_grad_(False)
    text_encoder.to(device).requires_grad_(False)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=amp)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    b, r = options.batch_size, options.resolution
    src, tgt = (torch.rand(b, 3, r, r, device=device) * 2 - 1 for _ in range(2))
    prompts = [tt.PROMPTS[i % len(tt.PROMPTS)] for i in range(b)]
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = ids.input_ids.to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            with torch.no_grad():
                latents = vae.encode(tgt).latent_dist.sample() * vae.config.scaling_factor
                source = vae.encode(src).latent_dist.mode()
                text = text_encoder(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (b,), device=device)
            pred = unet(torch.cat([scheduler.add_noise(latents, noise, t), source], 1), t, text).sample
            loss = F.mse_loss(pred.float(), noise.float())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return tt.timed(step, options.warmup, options.steps, device)


def library_train_loop(options, device: torch.device, tokenizer):
    """The trainer's step (bf16 autocast, cached latents, fused AdamW) from the libraries alone, for a
    machine without the project's data dependencies: noise the target latent, predict it from the
    noisy latent, the source latent and the text, mean squared error, as ``training_step`` does."""
    import torch.nn.functional as F
    import train_throughput as tt
    from diffusers import DDPMScheduler

    unet, _, (text_encoder,) = tt.model_parts("sd15", options.tiny)
    bf16 = device.type == "cuda"
    text_encoder.to(device, dtype=torch.bfloat16 if bf16 else torch.float32).requires_grad_(False)
    unet.to(device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device.type == "cuda")
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    b, size = options.batch_size, options.resolution // 8
    source, target = (torch.randn(b, 4, size, size, device=device) for _ in range(2))
    prompts = [tt.PROMPTS[i % len(tt.PROMPTS)] for i in range(b)]
    ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids = ids.input_ids.to(device)

    def step() -> None:
        with torch.no_grad():
            text = text_encoder(ids)[0].float()
        noise = torch.randn_like(target)
        t = torch.randint(0, 1000, (b,), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(torch.cat([scheduler.add_noise(target, noise, t), source], 1), t, text).sample
        F.mse_loss(pred.float(), noise).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return tt.timed(step, options.warmup, options.steps, device), unet


# --------------------------------------------------------------------------------- Paint-by-Example


def paint_by_example_pipeline(tiny: bool, device: torch.device):
    """A ``PaintByExamplePipeline`` of the published sizes (SD 1.x's UNet with 9 input channels, SD's
    VAE, a CLIP ViT-L/14 image encoder), or of the tests' tiny sizes, with random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example import (
        PaintByExampleImageEncoder,
        PaintByExamplePipeline,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    torch.manual_seed(0)
    with torch.device(device):  # random initialisation on the GPU: seconds instead of minutes
        if tiny:
            unet = UNet2DConditionModel(
                sample_size=16,
                in_channels=9,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=8,
            )
            vae = AutoencoderKL(
                block_out_channels=(32, 32),
                down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2,
                layers_per_block=1,
                latent_channels=4,
                sample_size=32,
            )
            vision = CLIPVisionConfig(
                hidden_size=32,
                image_size=32,
                patch_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                projection_dim=32,
            )
            encoder, crop = PaintByExampleImageEncoder(vision, proj_size=32), 32
        else:
            unet = UNet2DConditionModel(
                sample_size=64, in_channels=9, out_channels=4, cross_attention_dim=768
            )
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
            encoder, crop = PaintByExampleImageEncoder(vision, proj_size=768), 224
    pipe = PaintByExamplePipeline(
        vae=vae,
        image_encoder=encoder,
        unet=unet,
        scheduler=PNDMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True
        ),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(
            size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop}
        ),
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bench_pbe(args, device: torch.device) -> list[dict]:
    steps, fast_steps = (6, 3) if args.tiny else (50, 20)
    batch, count = (2, 4) if args.tiny else (8, 16)
    resolution = 32 if args.tiny else 512
    rng = np.random.default_rng(1)
    images = vg_images(count, (96, 128) if args.tiny else (500, 640, 800))
    boxes = [box_mask(image, rng) for image in images]
    references = [vg_images(1, (48,) if args.tiny else (224,), seed=n)[0] for n in range(count)]
    try:
        project_path(args)
        paint, pipe, precision = project_painter(
            args, device, steps, batch, resolution, images, boxes, references
        )
        path = "PaintByExamplePainter"
    except ImportError as error:
        paint, pipe, precision = library_painter(args, device, batch, resolution, images, boxes, references)
        path = f"diffusers' pipeline called as the painter calls it ({missing(error)})"
    from diffusers import DPMSolverMultistepScheduler

    default = rate(lambda: paint(steps), device, lambda: paint(steps, batch))
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    fast = rate(lambda: paint(fast_steps), device, lambda: paint(fast_steps, batch))
    common = {"batch": batch, "resolution": resolution, "precision": precision, "path": path}
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


def project_painter(args, device, steps, batch, resolution, images, boxes, references):
    """The project's painter, loaded through its loader from a folder saved as the hub's is."""
    from ieiw.pipelines.replacement.paint_by_example import PaintByExamplePainter
    from ieiw.pipelines.replacement.painting import PaintConfig, PaintJob

    with tempfile.TemporaryDirectory() as folder:
        pipe = paint_by_example_pipeline(args.tiny, device)
        (pipe if args.tiny else pipe.to(torch.float16)).save_pretrained(folder)
        del pipe
        config = PaintConfig(
            backend="paint_by_example",
            model=folder,
            device=str(device),
            resolution=resolution,
            steps=steps,
            batch_size=batch,
        )
        painter = PaintByExamplePainter(config)
    jobs = [
        PaintJob(image, mask, box, ref, np.ones(ref.shape[:2], bool), 0)
        for image, (mask, box), ref in zip(images, boxes, references, strict=True)
    ]

    def paint(steps: int, count: int | None = None) -> int:
        painter.config = config.model_copy(update={"steps": steps})
        return len(painter.paint(jobs[:count]))

    return paint, painter.pipe, str(painter.dtype).removeprefix("torch.")


def library_painter(args, device, batch, resolution, images, boxes, references):
    """``PaintByExamplePipeline`` called on square windows around the regions, as the painter calls it."""
    from PIL import Image

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = paint_by_example_pipeline(args.tiny, device).to(device, dtype)
    windows, masks = [], []
    for image, (mask, (x, y, w, h)) in zip(images, boxes, strict=True):
        side = min(max(w, h) * 2, *image.shape[:2])
        x0 = int(np.clip(x + w / 2 - side / 2, 0, image.shape[1] - side))
        y0 = int(np.clip(y + h / 2 - side / 2, 0, image.shape[0] - side))
        windows.append(Image.fromarray(image[y0 : y0 + side, x0 : x0 + side]).resize((resolution,) * 2))
        region = mask[y0 : y0 + side, x0 : x0 + side].astype(np.uint8) * 255
        masks.append(Image.fromarray(region).resize((resolution,) * 2))
    examples = [Image.fromarray(r) for r in references]

    def paint(steps: int, count: int | None = None) -> int:
        count = count or len(windows)
        for start in range(0, count, batch):
            part = slice(start, min(start + batch, count))
            pipe(
                example_image=examples[part],
                image=windows[part],
                mask_image=masks[part],
                height=resolution,
                width=resolution,
                num_inference_steps=steps,
                guidance_scale=5.0,
                output_type="np",
            )
        return count

    return paint, pipe, str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------- SAM


def sam_model(tiny: bool):
    """SAM ViT-H as ``sam_model_registry`` builds it without a checkpoint, or the tests' tiny SAM."""
    if tiny:
        from replacement_tiny_models import SAM_ARCH

        from ieiw.pipelines.replacement.sam import build_custom_sam

        return build_custom_sam(SAM_ARCH), {
            "model_type": "custom",
            "architecture": SAM_ARCH,
            "points_per_side": 4,
        }
    from segment_anything import sam_model_registry

    return sam_model_registry["vit_h"](checkpoint=None), {"model_type": "vit_h"}


def bench_sam(args, device: torch.device) -> list[dict]:
    model, settings = sam_model(args.tiny)
    try:
        project_path(args)
        from ieiw.pipelines.replacement.sam import SamConfig, SamProposer

        with tempfile.TemporaryDirectory() as folder:
            checkpoint = os.path.join(folder, "sam.pth")
            torch.save(model.state_dict(), checkpoint)
            proposer = SamProposer(SamConfig(checkpoint=checkpoint, device=str(device), **settings))
        propose, generator, path = proposer.propose, proposer.generator, "SamProposer"
    except ImportError as error:
        from segment_anything import SamAutomaticMaskGenerator

        generator = SamAutomaticMaskGenerator(
            model.to(device).eval(),
            output_mode="binary_mask",
            points_per_side=settings.get("points_per_side", 32),
        )

        def propose(image: np.ndarray):
            with torch.inference_mode():
                return generator.generate(image)

        path = f"SamAutomaticMaskGenerator ({missing(error)})"
    images = vg_images(2 if args.tiny else 8, (128,) if args.tiny else (1024,))

    def masks() -> int:
        for image in images:
            propose(image)
        return len(images)

    def encoder() -> int:
        with torch.inference_mode():
            for image in images:
                generator.predictor.set_image(image)
        return len(images)

    return [
        figure(
            "sam_images",
            "images/s",
            rate(masks, device, lambda: propose(images[0])),
            "the image encoder alone",
            rate(encoder, device),
            model=settings["model_type"],
            points_per_side=int(round(len(generator.point_grids[0]) ** 0.5)),
            image_long_side=max(images[0].shape[:2]),
            path=path,
        )
    ]


# ---------------------------------------------------------------------------------------------- CLIP


def bench_clip(args, device: torch.device) -> list[dict]:
    from PIL import Image

    rng = np.random.default_rng(2)
    crops = [
        rng.integers(0, 255, (int(rng.integers(64, 400)), int(rng.integers(64, 400)), 3), dtype=np.uint8)
        for _ in range(64 if args.tiny else 2048)
    ]
    batch = 32 if args.tiny else 256
    with tempfile.TemporaryDirectory() as folder:
        if args.tiny:
            from replacement_tiny_models import CLIP_CONFIG, CLIP_NAME

            config_file = Path(folder) / f"{CLIP_NAME}.json"
            config_file.write_text(json.dumps(CLIP_CONFIG))
            name = CLIP_NAME
        else:
            config_file, name = None, "ViT-L-14"
        try:
            project_path(args)
            from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig

            config = EmbedderConfig(
                model=name,
                pretrained=None,
                model_config_file=str(config_file) if config_file else None,
                device=str(device),
                batch_size=batch,
            )
            embedder = ClipEmbedder.from_config(config)
            model, preprocess, encode = embedder.model, embedder.preprocess, embedder._encode
            stage, path = embedder.embed_images, "ClipEmbedder.embed_images"
            precision = str(embedder.autocast_dtype or "float32").removeprefix("torch.")
        except ImportError as error:
            stage, model, preprocess, encode, precision = library_embedder(name, config_file, device, batch)
            path = f"open_clip called as ClipEmbedder calls it ({missing(error)})"
    ready = torch.stack([preprocess(Image.fromarray(c)) for c in crops[:batch]])
    rounds = max(1, len(crops) // len(ready))

    def raw() -> int:
        for _ in range(rounds):
            encode(model.encode_image, ready)
        return rounds * len(ready)

    return [
        figure(
            "clip_images",
            "images/s",
            rate(lambda: len(stage(crops)), device, lambda: stage(crops[:8])),
            "the model on ready tensors",
            rate(raw, device),
            model=name,
            batch=batch,
            precision=precision,
            path=path,
        )
    ]


def library_embedder(name: str, config_file: Path | None, device: torch.device, batch: int):
    """open_clip's model and preprocessing, batched and under bf16 autocast on a GPU, L2-normalised."""
    import open_clip
    from PIL import Image

    if config_file is not None and name not in open_clip.list_models():
        open_clip.add_model_config(config_file)
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
    model.eval()
    bf16 = device.type == "cuda"

    @torch.inference_mode()
    def encode(function, inputs: torch.Tensor) -> np.ndarray:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            features = function(inputs.to(device, non_blocking=True))
        return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()

    def stage(images: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            pixels = torch.stack([preprocess(Image.fromarray(a)) for a in images[start : start + batch]])
            out.append(encode(model.encode_image, pixels))
        return np.concatenate(out)

    return stage, model, preprocess, encode, "bfloat16" if bf16 else "float32"


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


def project_path(args) -> None:
    """Raise ImportError when ``--library`` asks for the library-only paths (as a bare machine gets)."""
    if args.library:
        raise ImportError("--library", name="--library")


def missing(error: ImportError) -> str:
    """Why a section took its library path: ``--library``, or the module the project's path lacks."""
    name = error.name or str(error)
    return "asked by --library" if name == "--library" else f"the project's path needs {name}"


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
    parser.add_argument(
        "--library",
        action="store_true",
        help="time the models through the libraries' own calls, not the project's classes (what a "
        "machine without the project's data dependencies gets on its own)",
    )
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
    models = "tiny models of the same classes" if args.tiny else "real architectures"
    print(f"device: {name}; {models}, random weights")
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
