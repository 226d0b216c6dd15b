"""Tiny models of the real classes whose weights are set so the grounded chain's outcome is known, saved
as real checkpoints are and loaded back through the production loaders.

- :func:`tiny_owlv2`: the verifier test's ``Owlv2ForObjectDetection`` (it finds red and blue: the query's
  colour word against each patch's mean redness and blueness), with 16-pixel patches on a 64-pixel input,
  so on a 128-pixel photo each 32-pixel cell is one box; its box head puts each box on its cell (for the
  first three cells of a row or column: OWL's box bias centres a patch's box on its far corner).
- :func:`tiny_sam`: a ``segment_anything`` SAM (128-pixel input, 4-pixel patches) whose mask is every
  vividly red or blue 4-pixel block of the photo, whatever the box: the gates then see what a leaking or
  partial mask looks like.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ieiw.pipelines.grounded.config import SegmenterConfig
from ieiw.pipelines.replacement.sam import SamArchitecture, build_custom_sam

OWL_SIZE = 64
OWL_PATCH = 16
CELL = 32  # photo pixels per detector patch on a 128-pixel photo
PHOTO = 128
SAM_ARCH = SamArchitecture(
    image_size=128,
    patch_size=4,
    encoder_embed_dim=32,
    encoder_depth=1,
    encoder_num_heads=2,
    encoder_global_attn_indexes=[],
    window_size=4,
    prompt_embed_dim=32,
    decoder_depth=1,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)
SAM_THRESHOLD = 2.0  # of SAM's normalised (R - G) or (B - G): vivid red (3.2) or blue (3.5) only


def tiny_owlv2(directory: Path, seed: int = 0) -> Path:
    """The verifier test's tiny OWLv2 at 16-pixel patches, saved with ``save_pretrained``."""
    from judge_tiny_models import _clip_bpe
    from transformers import (
        CLIPTokenizer,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file, vocab = _clip_bpe(directory)
    tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=16)
    width = 32
    config = Owlv2Config(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": width,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["!"],
        },
        vision_config={
            "hidden_size": width,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": OWL_SIZE,
            "patch_size": OWL_PATCH,
        },
        projection_dim=width,
    )
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config)
    area = OWL_PATCH * OWL_PATCH
    with torch.no_grad():
        for tower in (model.owlv2.text_model, model.owlv2.vision_model):
            for layer in tower.encoder.layers:  # residual blocks that add nothing: features pass through
                for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
                    linear.weight.zero_()
                    linear.bias.zero_()
        text = model.owlv2.text_model.embeddings
        text.position_embedding.weight.zero_()
        text.token_embedding.weight[:, 2] = 1.0  # every token shares the "constant" direction
        for word, axis in (("red</w>", 0), ("blue</w>", 1)):
            row = text.token_embedding.weight[vocab[word]]
            row.zero_()
            row[axis], row[2] = 2.0, 1.0
        model.owlv2.text_projection.weight.copy_(torch.eye(width))
        vision = model.owlv2.vision_model.embeddings
        vision.class_embedding.zero_()
        kernel = torch.zeros(width, 3, OWL_PATCH, OWL_PATCH)
        kernel[0, 0], kernel[0, 1] = 1 / area, -1 / area  # redness: mean(R - G) over the patch
        kernel[1, 2], kernel[1, 1] = 1 / area, -1 / area  # blueness: mean(B - G)
        vision.patch_embedding.weight.copy_(kernel)
        vision.position_embedding.weight.zero_()
        vision.position_embedding.weight[1:, 2] = 1.0
        model.owlv2.vision_model.post_layernorm.bias.fill_(1.0)  # the class token's output: all ones
        model.class_head.dense0.weight.copy_(torch.eye(width))
        model.class_head.dense0.bias.zero_()
        model.class_head.logit_shift.weight.zero_()
        model.class_head.logit_shift.bias.fill_(-0.8)
        model.class_head.logit_scale.weight.zero_()
        model.class_head.logit_scale.bias.fill_(19.0)
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
        model.box_head.dense2.bias[:2] = -0.6  # a patch's box centred on its own cell, not its far corner
    image_processor = Owlv2ImageProcessor(
        size={"height": OWL_SIZE, "width": OWL_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    model.save_pretrained(directory)
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def colour_sam():
    """A SAM whose single mask is the vividly red or blue blocks of the image (see the module doc)."""
    torch.manual_seed(0)
    sam = build_custom_sam(SAM_ARCH)
    patch = SAM_ARCH.patch_size
    with torch.no_grad():
        encoder = sam.image_encoder
        kernel = torch.zeros_like(encoder.patch_embed.proj.weight)
        for out, channel in ((0, 0), (1, 2)):  # redness (R - G), blueness (B - G), normalised
            kernel[out, channel] = 1 / (patch * patch)
            kernel[out, 1] = -1 / (patch * patch)
        encoder.patch_embed.proj.weight.copy_(kernel)
        bias = torch.zeros_like(encoder.patch_embed.proj.bias)
        bias[:2] = -SAM_THRESHOLD
        encoder.patch_embed.proj.bias.copy_(bias)
        encoder.pos_embed.zero_()
        for block in encoder.blocks:  # pass features through
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
            block.mlp.lin2.weight.zero_()
            block.mlp.lin2.bias.zero_()
        first, _, second, _ = encoder.neck
        weight = torch.zeros_like(first.weight)
        weight[0, 0], weight[1, 0], weight[2, 1], weight[3, 1] = 1.0, -1.0, 1.0, -1.0  # mean zero
        first.weight.copy_(weight)
        weight = torch.zeros_like(second.weight)
        for c in range(4):
            weight[c, c, 1, 1] = 1.0
        second.weight.copy_(weight)
        prompt = sam.prompt_encoder
        prompt.no_mask_embed.weight.zero_()
        decoder = sam.mask_decoder
        for layer in decoder.transformer.layers:
            layer.cross_attn_image_to_token.out_proj.weight.zero_()
            layer.cross_attn_image_to_token.out_proj.bias.zero_()
        up1, _, _, up2, _ = decoder.output_upscaling
        weight = torch.zeros_like(up1.weight)  # (in, out, 2, 2)
        weight[0, 0], weight[0, 1], weight[2, 2], weight[2, 3] = 1.0, -1.0, 1.0, -1.0
        up1.weight.copy_(weight)
        up1.bias.zero_()
        weight = torch.zeros_like(up2.weight)
        weight[0, 0], weight[2, 0] = 1.0, 1.0  # red or blue
        up2.weight.copy_(weight)
        up2.bias.zero_()
        up2.bias[0] = -0.3
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.zero_()
            mlp.layers[-1].bias[0] = 1.0
    return sam


def tiny_sam(directory: Path) -> SegmenterConfig:
    """:func:`colour_sam` saved as a state dict, and the segmenter config that loads it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sam_colour.pth"
    torch.save(colour_sam().state_dict(), path)
    return SegmenterConfig(
        checkpoint=str(path), model_type="custom", architecture=SAM_ARCH, device="cpu", batch_size=2
    )


# ------------------------------------------------------------------------------------------- photos

RED, BLUE, PALE = (220, 30, 30), (30, 30, 220), (200, 120, 120)


def grey(seed: int) -> np.ndarray:
    """A grey photo with a little noise: nothing in it looks red or blue."""
    rng = np.random.default_rng(seed)
    return (np.full((PHOTO, PHOTO, 3), 124) + rng.integers(0, 8, (PHOTO, PHOTO, 3))).astype(np.uint8)


def paint(image: np.ndarray, colour: tuple[int, int, int], top: int, left: int, height: int, width: int):
    image[top : top + height, left : left + width] = colour
    return image
