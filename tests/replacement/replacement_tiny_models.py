"""Tiny, randomly initialised models of the real classes, saved the way real checkpoints are saved,
so the tests load them back through the production loaders."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ieiw.pipelines.replacement.sam import SamArchitecture, SamConfig, build_custom_sam
from ieiw.quality.embeddings import EmbedderConfig, register_model_config

CLIP_NAME = "ieiw-replacement-tiny-clip"
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
SAM_ARCH = SamArchitecture(
    image_size=256,
    patch_size=64,
    encoder_embed_dim=32,
    encoder_depth=1,
    encoder_num_heads=2,
    encoder_global_attn_indexes=[0],
    window_size=4,
    prompt_embed_dim=32,
    decoder_depth=1,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)
BLIP_WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[DEC]",
    "a",
    "photo",
    "of",
    "cat",
    "dog",
    "with",
    "the",
    "on",
    "sofa",
    "red",
    "car",
    "cup",
    "table",
    "grass",
]


def tiny_clip(directory: Path, seed: int = 0) -> EmbedderConfig:
    """An open_clip model from a custom JSON config, its state dict saved as ``clip.pt``."""
    import open_clip

    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{CLIP_NAME}.json"
    config_path.write_text(json.dumps(CLIP_CONFIG))
    register_model_config(str(config_path))
    torch.manual_seed(seed)
    model = open_clip.create_model(CLIP_NAME)
    torch.save(model.state_dict(), directory / "clip.pt")
    return EmbedderConfig(
        model=CLIP_NAME,
        pretrained=str(directory / "clip.pt"),
        model_config_file=str(config_path),
        device="cpu",
        batch_size=16,
    )


def tiny_sam(directory: Path, seed: int = 0) -> SamConfig:
    """A 1-layer, 32-wide SAM (patch 64 on 256 px) saved as a state dict."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(build_custom_sam(SAM_ARCH).state_dict(), directory / "sam_tiny.pth")
    return SamConfig(
        checkpoint=str(directory / "sam_tiny.pth"),
        model_type="custom",
        architecture=SAM_ARCH,
        device="cpu",
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )


def tiny_paint_by_example(directory: Path, seed: int = 0) -> Path:
    """A ``PaintByExamplePipeline`` (9-channel UNet, tiny VAE and CLIP vision encoder) via save_pretrained."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example import (
        PaintByExampleImageEncoder,
        PaintByExamplePipeline,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=32,
        image_size=32,
        patch_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        projection_dim=32,
    )
    pipe = PaintByExamplePipeline(
        vae=AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 32),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=32,
        ),
        image_encoder=PaintByExampleImageEncoder(vision, proj_size=32),
        unet=UNet2DConditionModel(
            sample_size=16,
            in_channels=9,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=32,
        ),
        scheduler=PNDMScheduler(skip_prk_steps=True),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def tiny_blip(directory: Path, seed: int = 0) -> Path:
    """A ``BlipForConditionalGeneration`` + ``BlipProcessor`` (BERT tokenizer from a written vocab.txt)."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(BLIP_WORDS) + "\n")
    tokenizer = BertTokenizer(str(vocab))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "sep_token_id": 3,
        "eos_token_id": 3,
        "bos_token_id": tokenizer.convert_tokens_to_ids("[DEC]"),
    }
    vision = {
        "hidden_size": 32,
        "image_size": 32,
        "patch_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(
        BlipConfig(text_config=text, vision_config=vision, projection_dim=32)
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
