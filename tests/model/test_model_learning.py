"""Training must learn: on a synthetic recolouring task the trained model denoises towards the target
far better than the untrained one, measured in latent space against the target's latent."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from synthetic_edits import make_sample, write_synthetic_shards

from ieiw.model.build import widen_conv_in
from ieiw.model.config import TrainConfig
from ieiw.model.trainer import train

SIZE = 16
TIMESTEPS = (200, 400, 600, 800)


def _pixels(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def denoising_error(unet, pipe, scheduler, samples) -> float:
    """Mean squared distance between the model's one-step estimate of the clean target latent and the
    target latent itself, from the same noise at several noise levels, conditioned on source + instruction."""
    vae = pipe.vae
    source = vae.encode(_pixels([s.source for s in samples])).latent_dist.mode()
    target = vae.encode(_pixels([s.target for s in samples])).latent_dist.mode() * vae.config.scaling_factor
    tokens = pipe.tokenizer([s.meta.instruction for s in samples], padding="max_length", truncation=True,
                            max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    text = pipe.text_encoder(tokens)[0]
    generator = torch.Generator().manual_seed(0)
    errors = []
    for t in TIMESTEPS:
        noise = torch.randn(target.shape, generator=generator)
        steps = torch.full((len(samples),), t)
        noisy = scheduler.add_noise(target, noise, steps)
        eps = unet(torch.cat([noisy, source], 1), steps, text).sample
        alpha = scheduler.alphas_cumprod[t]
        estimate = (noisy - (1 - alpha).sqrt() * eps) / alpha.sqrt()
        errors.append(((estimate - target) ** 2).mean().item())
    return float(np.mean(errors))


def test_training_learns_the_synthetic_edit(tiny_base, tmp_path):
    shards = tmp_path / "shards"
    write_synthetic_shards(str(shards), count=256, per_shard=64, seed=3, size=SIZE)
    config = TrainConfig.model_validate({
        "base_model": str(tiny_base), "output_dir": str(tmp_path / "run"),
        "data": {"sets": [{"urls": [str(shards)]}], "resolution": SIZE, "num_workers": 1,
                 "shuffle_buffer": 128, "latent_cache": str(tmp_path / "cache")},
        "train_batch_size": 8, "max_steps": 300, "mixed_precision": "no", "checkpoint_every": 1000,
        "log_every": 50, "ema_decay": 0.99,
        "optim": {"learning_rate": 1e-3, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 20},
    })
    out = train(config)

    held_out = [make_sample(np.random.default_rng(99), i, SIZE, "held-out") for i in range(32)]
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(out)
    scheduler = DDPMScheduler.from_pretrained(out, subfolder="scheduler")
    untrained = widen_conv_in(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet"))
    trained_error = denoising_error(pipe.unet, pipe, scheduler, held_out)
    untrained_error = denoising_error(untrained, pipe, scheduler, held_out)
    do_nothing = np.mean([(1 - scheduler.alphas_cumprod[t]) / scheduler.alphas_cumprod[t] for t in TIMESTEPS])
    print(f"latent error: trained {trained_error:.4f}, untrained {untrained_error:.4f}, "
          f"zero-noise estimate {do_nothing:.4f}")
    assert trained_error < 0.2 * untrained_error
    assert trained_error < 0.1 * do_nothing  # the estimate with predicted noise 0
