"""Tiny, randomly initialised models of the real classes, for smoke runs and tests with no download.

:func:`save_tiny_sd` writes a Stable-Diffusion-1.5-shaped text-to-image pipeline (``CLIPTokenizer``,
``CLIPTextModel``, ``AutoencoderKL``, ``UNet2DConditionModel`` with a 4-channel input, SD 1.5's
``PNDMScheduler``) at toy sizes, saved by ``StableDiffusionPipeline.save_pretrained`` in the layout of
``stable-diffusion-v1-5/stable-diffusion-v1-5``: ``ieiw train --base DIR`` widens and trains it through
the same code that trains the real one (``ieiw tiny-model DIR``). Its tokenizer is a byte-pair vocabulary
written here from a short word list (letters spell every other word).

:func:`save_tiny_clip` writes an open_clip model (a JSON architecture and safetensors weights) that
``ieiw evaluate --clip-model NAME --clip-config-file JSON --clip-pretrained WEIGHTS`` loads through its
production loader (``ieiw tiny-model DIR --clip``).

Their outputs mean nothing: they show that a run goes through, in seconds on a CPU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

WORDS = [
    "make", "the", "circle", "square", "red", "green", "blue", "yellow", "white", "black",
    "turn", "into", "a", "remove", "add", "photo", "of", "dog", "cat", "sky",
]  # fmt: skip
HIDDEN = 32  # the text encoder's width (the UNet's cross-attention width)
MAX_LENGTH = 16  # tokens per prompt
TINY_CLIP = "ieiw-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


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


def tiny_tokenizer(directory: Path):
    """A ``CLIPTokenizer`` over :func:`write_tokenizer`'s vocabulary (written into ``directory``)."""
    from transformers import CLIPTokenizer

    write_tokenizer(directory)
    return CLIPTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=MAX_LENGTH
    )


def tiny_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(config)


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=32,
    )


def tiny_unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_scheduler():
    """Stable Diffusion 1.5's noise schedule."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def save_tiny_sd(directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny text-to-image pipeline (4-channel UNet) in Stable Diffusion 1.5's diffusers layout;
    the same ``seed`` writes the same weights."""
    import torch
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as vocab_dir:
        tokenizer = tiny_tokenizer(Path(vocab_dir))
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=tiny_unet(4),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def save_tiny_clip(directory: str | Path, seed: int = 0, name: str = TINY_CLIP) -> tuple[str, str, str]:
    """Write a tiny open_clip architecture (``<name>.json``) and random weights (safetensors); returns
    ``(model name, config file, weights file)``, what ``--clip-model``, ``--clip-config-file`` and
    ``--clip-pretrained`` take."""
    import open_clip
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / f"{name}.json"
    config_file.write_text(json.dumps(TINY_CLIP_CONFIG, indent=1))
    open_clip.add_model_config(config_file)
    torch.manual_seed(seed)
    model = CLIP(
        **TINY_CLIP_CONFIG
    )  # the class open_clip builds for this config, without its "random" warning
    weights = directory / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
    return name, str(config_file), str(weights)
