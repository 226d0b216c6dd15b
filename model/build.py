"""The models an InstructPix2Pix-style run trains: the base checkpoint's parts, its UNet widened.

:func:`build_models` loads tokenizer, text encoder, VAE, UNet and noise scheduler from
``config.base_model`` (diffusers layout; a hub id at exactly its pinned commit), freezes the VAE and text
encoder, and widens the UNet's ``conv_in`` from 4 to 8 input channels (noisy target latent + source-image
latent) with the new weights at zero, so the widened model starts out as the base model. An SDXL base (its
``model_index.json`` names a ``text_encoder_2``, see :mod:`ieiw.model.family`) also brings its second
tokenizer and text encoder (``CLIPTextModelWithProjection``, whose pooled output the UNet's
``text_time`` embedding takes with the size and crop ids).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ieiw.model.config import TrainConfig
from ieiw.model.family import SD, SDXL, Family, family_of_index, model_index
from ieiw.storage.models import pretrained

LATENT_CHANNELS_IN = 8  # noisy target latent + source-image latent


@dataclass
class Models:
    """The parts of one run; ``ema`` holds the UNet's moving average when ``config.use_ema``; SDXL's
    second tokenizer and text encoder are set for an SDXL base (``family``)."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    ema: EMAModel | None = None
    family: Family = SD
    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    # SDXL: the pipeline's unconditional text is zeros (not the encoded empty prompt) when this is set
    force_zeros_for_empty_prompt: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.family == SDXL

    @property
    def text_encoders(self) -> list:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    @property
    def vae_factor(self) -> int:
        """Pixels per latent along each side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE's and the UNet's downsampling together)."""
        return self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = LATENT_CHANNELS_IN) -> UNet2DConditionModel:
    """Give the UNet ``in_channels`` inputs; the new input weights start at zero (InstructPix2Pix)."""
    old = unet.conv_in
    if old.in_channels == in_channels:
        return unet
    if old.in_channels > in_channels:
        raise ValueError(f"the UNet already takes {old.in_channels} channels, more than {in_channels}")
    new = torch.nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        new.bias.copy_(old.bias)
    unet.conv_in = new.to(device=old.weight.device, dtype=old.weight.dtype)
    unet.register_to_config(in_channels=in_channels)
    return unet


def build_models(config: TrainConfig, frozen_dtype: torch.dtype = torch.float32) -> Models:
    """Load the base checkpoint's parts; freeze VAE and text encoders; widen and prepare the UNet."""
    base, pinned = pretrained(config.base_model)  # a hub id pinned to a commit loads exactly it
    index = model_index(config.base_model)
    family = family_of_index(index)
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer", **pinned)
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", dtype=frozen_dtype, **pinned)
    tokenizer_2 = text_encoder_2 = None
    if family == SDXL:
        tokenizer_2 = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2", **pinned)
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
            base, subfolder="text_encoder_2", dtype=frozen_dtype, **pinned
        )
        text_encoder_2.requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae", dtype=frozen_dtype, **pinned)
    if family == SDXL and frozen_dtype == torch.float16 and vae.config.force_upcast:
        vae.to(torch.float32)  # SDXL's VAE overflows in float16 (its config says so), as its pipelines know
    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(base, subfolder="unet", **pinned))
    if family == SDXL and unet.config.addition_embed_type != "text_time":
        raise ValueError(f"{base}: an SDXL checkpoint's UNet needs addition_embed_type 'text_time'")
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler", **pinned)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.set_attn_processor(AttnProcessor2_0())  # PyTorch scaled-dot-product attention
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    ema = None
    if config.use_ema:
        ema = EMAModel(
            unet.parameters(),
            decay=config.ema_decay,
            model_cls=UNet2DConditionModel,
            model_config=unet.config,
        )
    return Models(
        tokenizer,
        text_encoder,
        vae,
        unet,
        noise_scheduler,
        ema,
        family=family,
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
        force_zeros_for_empty_prompt=family == SDXL and bool(index.get("force_zeros_for_empty_prompt", True)),
    )
