"""A tiny, randomly initialised SDXL-shaped checkpoint for the model tests.

SDXL's real classes at toy sizes: two text encoders (``CLIPTextModel`` and
``CLIPTextModelWithProjection``, whose pooled projection the UNet takes), their two tokenizers (the
hand-written byte-pair vocabulary of :mod:`tiny_diffusion`), a ``UNet2DConditionModel`` with
``addition_embed_type="text_time"`` (six size and crop ids plus the pooled text), the SDXL noise schedule,
saved by ``StableDiffusionXLPipeline.save_pretrained`` in the layout of ``stabilityai/stable-diffusion-xl-
base-1.0``, so the trainer, ``ieiw edit`` and ``ieiw evaluate`` load it through their production code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from tiny_diffusion import HIDDEN, MAX_LENGTH, tiny_tokenizer, tiny_vae
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

PROJECTION = 16  # the second text encoder's pooled projection
TIME_EMBED = 8  # per size or crop id


def _text_config(vocab_size: int, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        **extra,
    )


def tiny_sdxl_unet(in_channels: int = 4) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + PROJECTION,
    )


def tiny_sdxl_scheduler() -> EulerDiscreteScheduler:
    """SDXL base's noise schedule."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )


def save_tiny_sdxl_base(directory: Path, seed: int = 0) -> Path:
    """Save a tiny SDXL text-to-image checkpoint (4-channel UNet) in SDXL base's diffusers layout."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as vocab_dir:
        tokenizer = tiny_tokenizer(Path(vocab_dir))
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(len(tokenizer))),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(len(tokenizer), projection_dim=PROJECTION)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=tiny_sdxl_unet(4),
        scheduler=tiny_sdxl_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(directory)
    return directory
