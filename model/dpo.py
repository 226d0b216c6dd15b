"""Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization")
for an InstructPix2Pix-style editing model: the ``preference`` objective of a training stage.

A batch holds preference pairs: a source, an instruction, the chosen edit ``x_w`` and the rejected edit
``x_l``. Both edits' latents are noised with the *same* noise at the *same* timestep; the UNet sees each
as the editing model does (the noisy latent with the source-image latent beside it in the channels, the
instruction's embedding), with InstructPix2Pix's classifier-free dropout drawn once per pair, so both
members of a pair lose (or keep) their text and source image together. The policy (the UNet training)
and the reference (the stage's starting checkpoint: loaded once, frozen, in eval mode, in the training
precision; :func:`reference_unet`) each predict both; an error is the per-sample mean squared error of a
prediction against the diffusion target (the noise, or the velocity of a v-prediction model), as diffusers'
``train_diffusion_dpo.py`` measures it. With the policy's errors ``e_w``, ``e_l`` and the reference's
``e_w_ref``, ``e_l_ref``:

    logit = -beta/2 * ((e_w - e_w_ref) - (e_l - e_l_ref))
    loss  = -log sigmoid(logit)              (the batch mean)

so the loss falls as the policy denoises the chosen edit better, and the rejected one worse, than the
reference does. diffusers' script scales by its ``--beta_dpo`` alone: its 2500 is our ``beta`` 5000, the
paper's value for SD 1.5.

What a step reports (:class:`PreferenceStats`): the loss; the implicit accuracy (pairs whose logit is
positive, a tie counting half: the policy's implicit reward prefers the chosen edit); the reward margin
(the mean logit: the implicit reward of the chosen edit minus the rejected one's, ``-beta/2 (e - e_ref)``
each); the chosen and rejected errors of the policy and of the reference.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from ieiw.model.conditioning import TextConditioning
from ieiw.model.step import (
    batch_latents,
    diffusion_target,
    dropped_conditioning,
    predict,
    rejected_latents,
    time_ids_of,
)


@dataclass
class PreferenceStats:
    """What one preference step reports (batch means; detached tensors, so processes can gather them)."""

    implicit_accuracy: torch.Tensor
    reward_margin: torch.Tensor
    chosen_error: torch.Tensor
    rejected_error: torch.Tensor
    ref_chosen_error: torch.Tensor
    ref_rejected_error: torch.Tensor

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def as_dict(self) -> dict[str, torch.Tensor]:
        return asdict(self)


@dataclass
class PreferenceStep:
    """The loss of one step (with its graph) and what it reports."""

    loss: torch.Tensor
    stats: PreferenceStats


def dpo_logits(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Each pair's ``-beta/2 * ((e_w - e_w_ref) - (e_l - e_l_ref))`` from the four per-sample errors."""
    return -0.5 * beta * ((chosen - ref_chosen) - (rejected - ref_rejected))


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, PreferenceStats]:
    """The Diffusion-DPO loss of a batch from the four per-sample denoising errors, and its report."""
    logits = dpo_logits(chosen, rejected, ref_chosen, ref_rejected, beta)
    loss = -F.logsigmoid(logits).mean()
    detached = logits.detach()
    accuracy = (detached > 0).float().mean() + 0.5 * (detached == 0).float().mean()
    stats = PreferenceStats(
        implicit_accuracy=accuracy,
        reward_margin=detached.mean(),
        chosen_error=chosen.detach().mean(),
        rejected_error=rejected.detach().mean(),
        ref_chosen_error=ref_chosen.detach().mean(),
        ref_rejected_error=ref_rejected.detach().mean(),
    )
    return loss, stats


def per_sample_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared error of each sample's prediction (over channels and pixels), in float32."""
    squared = F.mse_loss(prediction.float(), target.float(), reduction="none")
    return squared.mean(dim=tuple(range(1, squared.ndim)))


def reference_unet(unet: torch.nn.Module, dtype: torch.dtype, device) -> torch.nn.Module:
    """The frozen reference: a copy of the starting UNet (taken before any step or resume), in eval mode,
    without gradients, in the training precision ``dtype``, on ``device``."""
    reference = copy.deepcopy(unet)
    reference.requires_grad_(False)
    reference.eval()
    if next(reference.parameters()).dtype != dtype:
        reference.to(dtype=dtype)
    return reference.to(device)


def _twice(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x], dim=0)


def preference_step(
    config,
    models,
    unet,
    reference: torch.nn.Module,
    batch: dict,
    null_text: torch.Tensor | TextConditioning,
    generator: torch.Generator,
    device,
) -> PreferenceStep:
    """The Diffusion-DPO loss of one batch of preference pairs (see the module docstring).

    The policy predicts the chosen and the rejected edits in one forward pass of twice the batch; the
    reference does the same without gradients, under autocast in its own precision when that is not
    float32 (what the policy computes in under mixed precision).
    """
    chosen, source = batch_latents(models, batch, generator, device, config.image_conditioning)
    rejected = rejected_latents(models, batch, generator, device)
    bsz = chosen.shape[0]
    noise = torch.randn(chosen.shape, generator=generator, device=device)
    timesteps = torch.randint(
        0, models.noise_scheduler.config.num_train_timesteps, (bsz,), generator=generator, device=device
    )
    text, source = dropped_conditioning(config, models, batch, source, null_text, generator, device)
    latents, noise2, timesteps2 = torch.cat([chosen, rejected]), _twice(noise), _twice(timesteps)
    noisy = models.noise_scheduler.add_noise(latents, noise2, timesteps2)
    target = diffusion_target(models, latents, noise2, timesteps2)
    model_input = torch.cat([noisy, _twice(source)], dim=1)
    text2 = TextConditioning(_twice(text.hidden), None if text.pooled is None else _twice(text.pooled))
    time_ids = time_ids_of(models, batch, chosen, device)
    time_ids = None if time_ids is None else _twice(time_ids)

    errors = per_sample_error(predict(models, unet, model_input, timesteps2, text2, time_ids), target)
    ref_errors = reference_errors(models, reference, model_input, timesteps2, text2, time_ids, target)
    loss, stats = dpo_loss(*errors.chunk(2), *ref_errors.chunk(2), beta=config.beta)
    return PreferenceStep(loss, stats)


@torch.no_grad()
def reference_errors(
    models, reference, model_input, timesteps, text: TextConditioning, time_ids, target
) -> torch.Tensor:
    """The reference UNet's per-sample errors (no gradient ever reaches it)."""
    dtype = next(reference.parameters()).dtype
    device_type = model_input.device.type
    with torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32):
        prediction = predict(models, reference, model_input, timesteps, text, time_ids)
    return per_sample_error(prediction, target)
