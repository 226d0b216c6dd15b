"""The parts of one training step that every objective shares: the latents of a batch, InstructPix2Pix's
classifier-free dropout of the text and the source image, the diffusion target, and the UNet's prediction
from the noisy latent, the source latent and the text (SD's hidden states; SDXL's also its pooled text and
size ids). :func:`ieiw.model.trainer.training_step` (the editing loss) and
:func:`ieiw.model.dpo.preference_step` (Diffusion-DPO) are built from them.
"""

from __future__ import annotations

import torch

from ieiw.model.conditioning import TextConditioning, encode_prompts, size_ids


def batch_latents(models, batch: dict, generator: torch.Generator, device, source: bool = True):
    """Target latents (scaled, sampled) and source-image latents (unscaled mean, as the pipeline);
    without ``source`` the source latents are zeros and the source images are not encoded."""
    scale = models.vae.config.scaling_factor
    dtype = models.vae.dtype
    if "tgt_lat" in batch:
        tgt, src = batch["tgt_lat"].to(device) * scale, batch["src_lat"].to(device)
        return tgt, src if source else torch.zeros_like(src)
    with torch.no_grad():
        tgt = models.vae.encode(batch["tgt"].to(device, dtype)).latent_dist.sample(generator) * scale
        src = models.vae.encode(batch["src"].to(device, dtype)).latent_dist.mode() if source else None
    return tgt.float(), src.float() if source else torch.zeros_like(tgt, dtype=torch.float32)


def rejected_latents(models, batch: dict, generator: torch.Generator, device) -> torch.Tensor:
    """A preference batch's rejected edits as latents, made as the target's are (scaled, sampled)."""
    scale = models.vae.config.scaling_factor
    if "rej_lat" in batch:
        return batch["rej_lat"].to(device) * scale
    with torch.no_grad():
        encoded = models.vae.encode(batch["rej"].to(device, models.vae.dtype)).latent_dist
        return (encoded.sample(generator) * scale).float()


def cfg_masks(config, batch_size: int, generator: torch.Generator, device):
    """Which samples lose their text and which their source image (InstructPix2Pix's dropout)."""
    u = torch.rand(batch_size, generator=generator, device=device)
    p = config.cfg_dropout
    text_only = u < p.text
    both = (u >= p.text) & (u < p.text + p.both)
    image_only = (u >= p.text + p.both) & (u < p.text + p.both + p.image)
    return text_only | both, image_only | both


def dropped_conditioning(
    config,
    models,
    batch: dict,
    source_latents: torch.Tensor,
    null_text: torch.Tensor | TextConditioning,
    generator: torch.Generator,
    device,
) -> tuple[TextConditioning, torch.Tensor]:
    """The batch's text and source latents after classifier-free dropout: a dropped text is ``null_text``
    (:func:`ieiw.model.conditioning.null_conditioning`; a tensor for SD's hidden states), a dropped image
    zeros."""
    with torch.no_grad():
        text = encode_prompts(models, batch["text"], device).float()
    null = null_text if isinstance(null_text, TextConditioning) else TextConditioning(null_text)
    drop_text, drop_image = cfg_masks(config, source_latents.shape[0], generator, device)
    text = text.where(drop_text, null.float())
    return text, source_latents * (~drop_image).float()[:, None, None, None]


def diffusion_target(models, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """What the UNet learns to predict: the noise, or the velocity for a v-prediction model."""
    if models.noise_scheduler.config.prediction_type == "v_prediction":
        return models.noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def predict(models, unet, model_input, timesteps, text: TextConditioning, time_ids=None) -> torch.Tensor:
    """The UNet's prediction from ``model_input`` (noisy latent and source latent, side by side in the
    channels); SDXL also takes the pooled text and each sample's six size ids (``time_ids``)."""
    if models.is_sdxl:
        added = {"text_embeds": text.pooled, "time_ids": time_ids}
        return unet(model_input, timesteps, text.hidden, added_cond_kwargs=added, return_dict=False)[0]
    return unet(model_input, timesteps, text.hidden, return_dict=False)[0]


def time_ids_of(models, batch: dict, latents: torch.Tensor, device) -> torch.Tensor | None:
    """SDXL's size and crop ids of the batch (None for SD)."""
    return size_ids(batch, latents, models.vae_factor, device) if models.is_sdxl else None
