"""Training throughput of the bundled trainer's step against a plain reference loop, in one run.

Both train the same randomly initialised UNet (Stable Diffusion 1.5's configuration with 8 input
channels on a GPU; a tiny one on the CPU so the script stays tested) at 256 px on in-memory data:

- baseline, as the common reference scripts are written: fp32 weights under fp16 autocast with a
  gradient scaler, the VAE encoding source and target on the fly every step, no compile;
- ours: :func:`ieiw.model.trainer.training_step` under ``accelerate`` bf16 mixed precision, reading
  cached latents (the latent-cache pass), fused AdamW, optionally ``torch.compile``.

Prints images per second, the ratio, and the model FLOPs utilisation (UNet training FLOPs,
forward counted with ``torch.utils.flop_counter`` times 3 for forward + backward, over the GPU's
dense bf16 peak). Data loading is outside the timed loop for both.

    python bench/train_throughput.py                  # GPU: SD1.5 UNet; CPU: tiny UNet
    python bench/train_throughput.py --compile --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0, "A10": 125.0, "4090": 165.0, "V100": 125.0}
PROMPTS = ["make the sky pink", "remove the dog", "turn the car into a bus", "add a hat to the man"]


def sd15_models(tiny: bool):
    """UNet (8 inputs), VAE and text encoder: Stable Diffusion 1.5's configs, or tiny ones."""
    if tiny:
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=8, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=4)
        text = CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, max_position_embeddings=77, bos_token_id=0,
                              eos_token_id=1, pad_token_id=1)
    else:
        unet = UNet2DConditionModel(sample_size=64, in_channels=8, out_channels=4, cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
        text = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, max_position_embeddings=77)
    return unet, vae, CLIPTextModel(text)


def char_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over single characters (no download): prompts still cost 77 tokens."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def unet_train_flops(unet, batch: int, latent: int, text_dim: int, device) -> float:
    """Forward FLOPs of one batch, times 3 (backward is about twice the forward)."""
    x = torch.randn(batch, 8, latent, latent, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    c = torch.randn(batch, 77, text_dim, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t, c)
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
    """The reference-script step: fp16 autocast + GradScaler, VAE and text encoder every step."""
    unet, vae, text_encoder = sd15_models(args.tiny)
    unet.to(device).train()
    vae.to(device).requires_grad_(False)
    text_encoder.to(device).requires_grad_(False)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
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
                ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True,
                                return_tensors="pt").input_ids.to(device)
                text = text_encoder(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (b,), device=device)
            noisy = scheduler.add_noise(latents, noise, t)
            pred = unet(torch.cat([noisy, source], 1), t, text).sample
            loss = F.mse_loss(pred.float(), noise.float())
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, args.warmup, args.steps, device)


def our_loop(args, device, tokenizer):
    """The trainer's step: accelerate bf16, cached latents, fused AdamW, optional compile."""
    from ieiw.model.build import Models  # the project's trainer (the baseline needs only diffusers)
    from ieiw.model.config import TrainConfig
    from ieiw.model.trainer import encode_text, training_step

    precision = "bf16" if device.type == "cuda" else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    unet, vae, text_encoder = sd15_models(args.tiny)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    vae.to(device, dtype=dtype).requires_grad_(False)
    text_encoder.to(device, dtype=dtype).requires_grad_(False)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=device.type == "cuda")
    unet, optimizer = accelerator.prepare(unet, optimizer)
    model = torch.compile(unet) if args.compile else unet
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    models = Models(tokenizer, text_encoder, vae, unet, scheduler)
    config = TrainConfig.model_validate({"base_model": "-", "output_dir": "-",
                                         "data": {"sets": [{"urls": []}]}})
    b, size = args.batch_size, args.resolution // 8
    batch = {"src_lat": torch.randn(b, 4, size, size, device=device),
             "tgt_lat": torch.randn(b, 4, size, size, device=device),
             "text": [PROMPTS[i % len(PROMPTS)] for i in range(b)]}
    with torch.no_grad():
        null_text = encode_text(models, [""], device)
    counter = [0]

    def step():
        generator = torch.Generator(device=device).manual_seed(counter[0])
        counter[0] += 1
        loss = training_step(config, models, model, batch, null_text, generator, device)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, args.warmup + (3 if args.compile else 0), args.steps, device), unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny UNet (the default on the CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.tiny = args.tiny or device.type == "cpu"
    args.batch_size = args.batch_size or (32 if device.type == "cuda" else 4)
    args.steps = args.steps or (20 if device.type == "cuda" else 5)
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = char_tokenizer(Path(folder))
    images = args.batch_size * args.steps
    base_seconds = baseline_loop(args, device, tokenizer)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    our_seconds, unet = our_loop(args, device, tokenizer)
    text_dim = unet.config.cross_attention_dim
    flops = unet_train_flops(unet, args.batch_size, args.resolution // 8, text_dim, device)
    peak = peak_flops(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; UNet: {'tiny' if args.tiny else 'Stable Diffusion 1.5 config'}, "
          f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M parameters; {args.resolution} px, "
          f"batch {args.batch_size}, {args.steps} timed steps; UNet training FLOPs per image "
          f"{flops / args.batch_size / 1e9:.2f} GFLOP")
    gpu = device.type == "cuda"
    compiled = ", compile" if args.compile else ""
    for label, seconds in ((f"baseline ({'fp16 autocast' if gpu else 'fp32'}, VAE on the fly)", base_seconds),
                           (f"ours ({'bf16' if gpu else 'fp32'}, latent cache{compiled})", our_seconds)):
        rate = images / seconds
        mfu = f"{100 * flops / args.batch_size * rate / peak:.1f}%" if peak else "n/a (no known peak)"
        print(f"{label:48s} {rate:9.2f} images/s   MFU {mfu}")
    print(f"ratio ours / baseline: {base_seconds / our_seconds:.2f}x")


if __name__ == "__main__":
    main()
