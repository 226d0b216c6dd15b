"""Training throughput of the bundled trainer's step against a plain reference loop, in one run.

Both train the same randomly initialised UNet (Stable Diffusion 1.5's configuration with 8 input
channels on a GPU, or SDXL's with ``--base sdxl``; a tiny one on the CPU so the script stays tested) at
256 px (``--resolution``) on in-memory data:

- baseline, as the common reference scripts are written: fp32 weights under fp16 autocast with a
  gradient scaler, the VAE encoding source and target on the fly every step, no compile;
- ours: :func:`ieiw.model.trainer.training_step` under ``accelerate`` bf16 mixed precision, reading
  cached latents (the latent-cache pass), fused AdamW, optionally ``torch.compile``.

Prints images per second, the ratio, and the model FLOPs utilisation (UNet training FLOPs,
forward counted with ``torch.utils.flop_counter`` times 3 for forward + backward, over the GPU's
dense bf16 peak). Data loading is outside the timed loop for both.

With ``--stage preference`` it measures the preference stage (Diffusion-DPO, :mod:`ieiw.model.dpo`) against
the plain editing stage, both the trainer's step at the same batch size in one run: pairs per second
against samples per second, and their ratio. A preference step runs the policy forward and backward on
both edits of a pair and the frozen reference forward on both, about 8 UNet forward passes' worth of work
per pair against the editing step's 3 (forward + backward), so the expected ratio is about 3/8.

With ``--buckets`` it measures aspect-ratio bucketing instead, against the same loop without it: the
data stream (shards of photos of mixed shapes decoded, cropped and batched by :mod:`ieiw.model.data`,
one bucket per batch, against square crops) and the trainer's step on batches that cycle through the
buckets' shapes against square batches of ``resolution``.

    python bench/train_throughput.py                  # GPU: SD1.5 UNet; CPU: tiny UNet
    python bench/train_throughput.py --compile --batch-size 64
    python bench/train_throughput.py --base sdxl --resolution 512 --buckets
    python bench/train_throughput.py --stage preference       # Diffusion-DPO against the editing step
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

if TYPE_CHECKING:  # the project's modules load inside the functions that use them, so the plain
    # reference loop (and bench/gpu_throughput.py's library mode) runs where only the libraries are
    from ieiw.model.buckets import Buckets
    from ieiw.model.build import Models

PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "4090": 165.0,
    "V100": 125.0,
}
PROMPTS = ["make the sky pink", "remove the dog", "turn the car into a bus", "add a hat to the man"]
PHOTO_SHAPES = ((3, 4), (4, 3), (1, 1), (9, 16), (2, 3), (16, 9))  # height : width of the bench's photos


def _text(vocab: int, hidden: int, layers: int, heads: int, projection: int | None = None) -> CLIPTextConfig:
    extra = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **extra,
    )


def model_parts(base: str, tiny: bool):
    """UNet (8 inputs), VAE and text encoder(s): Stable Diffusion 1.5's or SDXL's configs, or tiny ones."""
    if tiny:
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            latent_channels=4,
        )
    else:
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
        )
    if base == "sdxl":
        if tiny:
            unet = UNet2DConditionModel(
                sample_size=32,
                in_channels=8,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=64,
                attention_head_dim=8,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 32,
            )
            encoders = (
                CLIPTextModel(_text(1000, 32, 2, 4)),
                CLIPTextModelWithProjection(_text(1000, 32, 2, 4, projection=32)),
            )
        else:  # stabilityai/stable-diffusion-xl-base-1.0's UNet and text encoders, random weights
            unet = UNet2DConditionModel(
                sample_size=128,
                in_channels=8,
                out_channels=4,
                layers_per_block=2,
                block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20),
                cross_attention_dim=2048,
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            )
            encoders = (
                CLIPTextModel(_text(49408, 768, 12, 12)),
                CLIPTextModelWithProjection(_text(49408, 1280, 32, 20, projection=1280)),
            )
        return unet, vae, encoders
    if tiny:
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=8,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        return unet, vae, (CLIPTextModel(_text(1000, 32, 2, 4)),)
    unet = UNet2DConditionModel(sample_size=64, in_channels=8, out_channels=4, cross_attention_dim=768)
    return unet, vae, (CLIPTextModel(_text(49408, 768, 12, 12)),)


def char_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over single characters (no download): prompts still cost 77 tokens."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def as_models(unet, vae, encoders, tokenizer, scheduler) -> Models:
    from ieiw.model.build import Models

    sdxl = len(encoders) == 2
    return Models(
        tokenizer,
        encoders[0],
        vae,
        unet,
        scheduler,
        family="sdxl" if sdxl else "sd",
        tokenizer_2=tokenizer if sdxl else None,
        text_encoder_2=encoders[1] if sdxl else None,
        force_zeros_for_empty_prompt=sdxl,
    )


def unet_train_flops(models: Models, batch: int, shape: tuple[int, int], device) -> float:
    """Forward FLOPs of one batch at ``shape`` (latent height, width), times 3 (backward is about twice)."""
    from ieiw.model.conditioning import size_ids

    unet = models.unet
    x = torch.randn(batch, 8, *shape, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    c = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    extra = {}
    if models.is_sdxl:
        pooled = models.text_encoder_2.config.projection_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled, device=device),
            "time_ids": size_ids({}, x, models.vae_factor, device),
        }
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t, c, **extra)
    return 3.0 * counter.get_total_flops()


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def timed(step, warmup: int, steps: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def baseline_loop(args, device, tokenizer):
    """The reference-script step: fp16 autocast + GradScaler, VAE and text encoder(s) every step."""
    from ieiw.model.conditioning import encode_prompts, size_ids  # SDXL's conditioning

    unet, vae, encoders = model_parts(args.base, args.tiny)
    unet.to(device).train()
    vae.to(device).requires_grad_(False)
    for encoder in encoders:
        encoder.to(device).requires_grad_(False)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    models = as_models(unet, vae, encoders, tokenizer, scheduler)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=use_amp)
    b, r = args.batch_size, args.resolution
    src = torch.rand(b, 3, r, r, device=device) * 2 - 1
    tgt = torch.rand(b, 3, r, r, device=device) * 2 - 1
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            with torch.no_grad():
                latents = vae.encode(tgt).latent_dist.sample() * vae.config.scaling_factor
                source = vae.encode(src).latent_dist.mode()
                text = encode_prompts(models, prompts, device)
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (b,), device=device)
            noisy = scheduler.add_noise(latents, noise, t)
            extra = {}
            if models.is_sdxl:
                ids = size_ids({}, latents, models.vae_factor, device)
                extra["added_cond_kwargs"] = {"text_embeds": text.pooled, "time_ids": ids}
            pred = unet(torch.cat([noisy, source], 1), t, text.hidden, **extra).sample
            loss = F.mse_loss(pred.float(), noise.float())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, args.warmup, args.steps, device)


def our_loop(args, device, tokenizer, shapes: list[tuple[int, int]] | None = None, objective: str = "edit"):
    """The trainer's step: accelerate bf16, cached latents, fused AdamW, optional compile; batches cycle
    through ``shapes`` (pixel height, width; default the square of ``resolution``). ``objective``
    ``preference``: the Diffusion-DPO step on pairs (a rejected latent per sample, a frozen reference)."""
    from ieiw.model.conditioning import null_conditioning
    from ieiw.model.config import TrainConfig
    from ieiw.model.dpo import preference_step, reference_unet
    from ieiw.model.trainer import training_step

    precision = "bf16" if device.type == "cuda" else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    torch.manual_seed(0)  # the same UNet for every objective
    unet, vae, encoders = model_parts(args.base, args.tiny)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    vae.to(device, dtype=dtype).requires_grad_(False)
    for encoder in encoders:
        encoder.to(device, dtype=dtype).requires_grad_(False)
    unet.train()
    reference = reference_unet(unet, dtype, device) if objective == "preference" else None
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device.type == "cuda")
    unet, optimizer = accelerator.prepare(unet, optimizer)
    model = torch.compile(unet) if args.compile else unet
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    models = as_models(unet, vae, encoders, tokenizer, scheduler)
    config = TrainConfig.model_validate(
        {"base_model": "-", "output_dir": "-", "data": {"sets": [{"urls": []}]}, "objective": objective}
    )
    b, factor = args.batch_size, models.vae_factor
    shapes = shapes or [(args.resolution, args.resolution)]
    names = ("src_lat", "tgt_lat", "rej_lat") if reference is not None else ("src_lat", "tgt_lat")
    batches = [
        {
            **{name: torch.randn(b, 4, h // factor, w // factor, device=device) for name in names},
            "text": [PROMPTS[i % len(PROMPTS)] for i in range(b)],
        }
        for h, w in shapes
    ]
    with torch.no_grad():
        null_text = null_conditioning(models, device)
    counter = itertools.count()

    def step():
        n = next(counter)
        generator = torch.Generator(device=device).manual_seed(n)
        batch = batches[n % len(batches)]
        if reference is not None:
            loss = preference_step(config, models, model, reference, batch, null_text, generator, device).loss
        else:
            loss = training_step(config, models, model, batch, null_text, generator, device)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warmup = args.warmup + (3 if args.compile else 0)
    warmup = max(warmup, len(shapes))  # every shape once before timing (a compile per shape)
    seconds = timed(step, warmup, args.steps, device)
    return seconds, models


def write_photo_shards(folder: Path, resolution: int, count: int) -> str:
    """Shards of ``count`` photo-sized pairs of mixed shapes (about 1.5 times ``resolution``)."""
    from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, Task, sample_key
    from ieiw.storage.shards import ShardSpec, ShardWriter

    rng = np.random.default_rng(0)
    with ShardWriter(str(folder), prefix="photos", spec=ShardSpec(max_samples=max(1, count // 4))) as writer:
        for i in range(count):
            h, w = PHOTO_SHAPES[i % len(PHOTO_SHAPES)]
            scale = 1.5 * resolution / (h * w) ** 0.5
            size = (max(8, round(h * scale)), max(8, round(w * scale)))
            source = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
            provenance = Provenance(dataset="bench", image_id=str(i))
            generator = GeneratorInfo(name="bench", backend="numpy")
            meta = SampleMeta(
                key=sample_key(Task.REPLACE, provenance, generator),
                task=Task.REPLACE,
                instruction=PROMPTS[i % len(PROMPTS)],
                provenance=provenance,
                generator=generator,
            )
            writer.write(Sample(meta=meta, source=source, target=255 - source))
    return str(folder)


def stream_rate(
    folder: str, resolution: int, batch_size: int, batches: int, buckets: Buckets | None
) -> float:
    """Images per second out of the training data stream (decode, crop, flip, batch), in this process."""
    from ieiw.model.data import SourceSet, StreamSettings, StreamState, make_loader

    urls = sorted(str(p) for p in Path(folder).glob("*.tar"))
    settings = StreamSettings(
        resolution=resolution, batch_size=batch_size, shuffle_buffer=16, shards_per_block=2, buckets=buckets
    )
    stream = iter(make_loader([SourceSet(urls)], settings, StreamState(0)))
    next(stream)
    images, start = 0, time.perf_counter()
    for _ in range(batches):
        images += len(next(stream)["key"])
    return images / (time.perf_counter() - start)


def describe(args, device, models: Models, flops: float) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    unet = models.unet
    which = (
        "tiny"
        if args.tiny
        else ("SDXL base config" if args.base == "sdxl" else "Stable Diffusion 1.5 config")
    )
    return (
        f"device: {name}; UNet: {which}, {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters; "
        f"{args.resolution} px, batch {args.batch_size}, {args.steps} timed steps; UNet training FLOPs per "
        f"image {flops / args.batch_size / 1e9:.2f} GFLOP"
    )


def bench_buckets(args, device, tokenizer) -> None:
    """Bucketed against square: the data stream, then the trainer's step."""
    from ieiw.model.buckets import Buckets

    buckets = Buckets.make(args.resolution, args.bucket_step)
    print(f"buckets (height x width): {', '.join(f'{h}x{w}' for h, w in buckets.shapes)}")
    with tempfile.TemporaryDirectory() as folder:
        shards = write_photo_shards(Path(folder), args.resolution, count=8 * args.batch_size)
        square_stream = stream_rate(shards, args.resolution, args.batch_size, args.stream_batches, None)
        bucket_stream = stream_rate(shards, args.resolution, args.batch_size, args.stream_batches, buckets)
    square_seconds, models = our_loop(args, device, tokenizer)
    flops = unet_train_flops(models, args.batch_size, (args.resolution // models.vae_factor,) * 2, device)
    if device.type == "cuda":
        del models
        torch.cuda.empty_cache()
    bucket_seconds, models = our_loop(args, device, tokenizer, list(buckets.shapes))
    print(describe(args, device, models, flops))
    images = args.batch_size * args.steps
    print(f"{'data stream, square crops':48s} {square_stream:9.2f} images/s")
    print(f"{'data stream, aspect-ratio buckets':48s} {bucket_stream:9.2f} images/s")
    print(f"ratio buckets / square (stream): {bucket_stream / square_stream:.2f}x")
    print(f"{'training step, square batches':48s} {images / square_seconds:9.2f} images/s")
    print(f"{'training step, one bucket per batch':48s} {images / bucket_seconds:9.2f} images/s")
    print(f"ratio buckets / square (step): {square_seconds / bucket_seconds:.2f}x")


def bench_preference(args, device, tokenizer) -> None:
    """The preference stage's step against the editing stage's, at the same batch size, alternated
    ``--repeats`` times; each one's best time counts (a shared machine's load comes and goes)."""
    best = {"edit": math.inf, "preference": math.inf}
    flops = None
    for _ in range(args.repeats):
        for objective in best:
            seconds, models = our_loop(args, device, tokenizer, objective=objective)
            best[objective] = min(best[objective], seconds)
            if flops is None:
                size = (args.resolution // models.vae_factor,) * 2
                flops = unet_train_flops(models, args.batch_size, size, device)
            if device.type == "cuda":
                del models
                torch.cuda.empty_cache()
    print(describe(args, device, models, flops) + f"; best of {args.repeats} alternated runs")
    samples = args.batch_size * args.steps
    edit_rate, pair_rate = samples / best["edit"], samples / best["preference"]
    print(f"{'editing stage (samples/s)':48s} {edit_rate:9.2f} images/s")
    print(f"{'preference stage (pairs/s)':48s} {pair_rate:9.2f} images/s")
    print(f"{'preference stage (edits through the UNet/s)':48s} {2 * pair_rate:9.2f} images/s")
    ratio = pair_rate / edit_rate
    print(f"ratio preference / edit (pairs against samples): {ratio:.2f}x (expected about 0.38x)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--base", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--buckets", action="store_true", help="bucketed against square, at --resolution")
    parser.add_argument(
        "--stage",
        choices=("edit", "preference"),
        default="edit",
        help="preference: the Diffusion-DPO stage's step against the editing stage's",
    )
    parser.add_argument("--repeats", type=int, default=None, help="--stage preference: alternated runs")
    parser.add_argument("--bucket-step", type=int, default=64)
    parser.add_argument("--stream-batches", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny UNet (the default on the CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    args = parser.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    args.tiny = args.tiny or device.type == "cpu"
    args.batch_size = args.batch_size or (32 if device.type == "cuda" else 4)
    args.steps = args.steps or (20 if device.type == "cuda" else 5)
    args.repeats = args.repeats or (1 if device.type == "cuda" else 3)
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = char_tokenizer(Path(folder))
    if args.buckets:
        bench_buckets(args, device, tokenizer)
        return
    if args.stage == "preference":
        bench_preference(args, device, tokenizer)
        return
    images = args.batch_size * args.steps
    base_seconds = baseline_loop(args, device, tokenizer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    our_seconds, models = our_loop(args, device, tokenizer)
    flops = unet_train_flops(models, args.batch_size, (args.resolution // models.vae_factor,) * 2, device)
    peak = peak_flops(device, args.peak_tflops)
    print(describe(args, device, models, flops))
    gpu = device.type == "cuda"
    compiled = ", compile" if args.compile else ""
    for label, seconds in (
        (f"baseline ({'fp16 autocast' if gpu else 'fp32'}, VAE on the fly)", base_seconds),
        (f"ours ({'bf16' if gpu else 'fp32'}, latent cache{compiled})", our_seconds),
    ):
        rate = images / seconds
        mfu = f"{100 * flops / args.batch_size * rate / peak:.1f}%" if peak else "n/a (no known peak)"
        print(f"{label:48s} {rate:9.2f} images/s   MFU {mfu}")
    print(f"ratio ours / baseline: {base_seconds / our_seconds:.2f}x")


if __name__ == "__main__":
    main()
