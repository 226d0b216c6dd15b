"""Tiny, randomly initialised Stable-Diffusion-shaped checkpoints for the model tests.

Real library classes (``CLIPTokenizer``, ``CLIPTextModel``, ``AutoencoderKL``,
``UNet2DConditionModel``, ``PNDMScheduler``) at toy sizes, saved with ``save_pretrained`` in the
diffusers layout a real base checkpoint has, so the trainer loads them through its production
code. The tokenizer is a byte-pair vocabulary written by hand from a short word list.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

WORDS = [
    "make", "the", "circle", "square", "red", "green", "blue", "yellow", "white", "black",
    "turn", "into", "a", "remove", "add", "photo", "of", "dog", "cat", "sky",
]
HIDDEN = 32
MAX_LENGTH = 16


def write_tokenizer(directory: Path, words: list[str] = WORDS) -> None:
    """Write ``vocab.json`` and ``merges.txt`` of a BPE vocabulary that spells ``words`` whole."""
    directory.mkdir(parents=True, exist_ok=True)
    letters = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>"] + letters + [c + "</w>" for c in letters]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:  # merge left to right: m a k e</w> -> ma k e</w> -> mak e</w> -> make</w>
            pair = f"{pieces[0]} {pieces[1]}"
            if pair not in merges:
                merges.append(pair)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def tiny_tokenizer(directory: Path) -> CLIPTokenizer:
    write_tokenizer(directory)
    return CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=MAX_LENGTH
    )


def tiny_text_encoder(vocab_size: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1,
        norm_num_groups=32, sample_size=32,
    )


def tiny_unet(in_channels: int = 4) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=HIDDEN,
        attention_head_dim=8, norm_num_groups=32,
    )


def tiny_scheduler() -> PNDMScheduler:
    """Stable Diffusion 1.5's noise schedule."""
    return PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )


def save_tiny_base(directory: Path, seed: int = 0) -> Path:
    """Save a tiny text-to-image checkpoint (4-channel UNet) in Stable Diffusion 1.5's layout."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as vocab_dir:
        tokenizer = tiny_tokenizer(Path(vocab_dir))
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(len(tokenizer)), tokenizer=tokenizer,
        unet=tiny_unet(4), scheduler=tiny_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory
