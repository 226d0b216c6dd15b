"""Tiny models of the real classes whose weights are set so the grounded chain's outcome is known, saved
as real checkpoints are and loaded back through the production loaders.

- :func:`tiny_owlv2`: the verifier test's ``Owlv2ForObjectDetection`` (it finds red and blue: the query's
  colour word against each patch's mean redness and blueness), with 16-pixel patches on a 64-pixel input,
  so on a 128-pixel photo each 32-pixel cell is one box; its box head puts each box on its cell (for the
  first three cells of a row or column: OWL's box bias centres a patch's box on its far corner).
- :func:`tiny_sam`: a ``segment_anything`` SAM (128-pixel input, 4-pixel patches) whose mask is every
  vividly red or blue 4-pixel block of the half of the photo (left or right) that holds the box's centre:
  two objects on either side of a photo get a mask each, and within a half the gates see what a leaking
  or partial mask looks like.
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
SAM_VIVID = 3.0  # of SAM's normalised R + B - 2G: vivid red (3.39) or blue (3.45); the dull red 2.5, pale 1.5
SAM_SIDE = 10.0  # what a block's vividness loses in the copy of the half it is not in


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


def side_sam():
    """A SAM whose single mask is the vividly red or blue blocks of the half of the image (left or right)
    that holds the prompt box's centre (see the module doc).

    The image side: the patch embedding measures each 4-pixel block's vividness, ``R + B - 2G`` of SAM's
    normalised pixels less :data:`SAM_VIVID`; the position embedding gives it twice, once for each half,
    the far half's copy lowered by :data:`SAM_SIDE`; the neck and the upscaling carry each copy as a
    mirrored pair (so every LayerNorm keeps its sign) to two mask channels, ``left`` and ``right``.
    The prompt side: the box's corners are encoded with one spatial frequency on ``x`` only, so the first
    feature of a corner is ``sin(pi / 4 * x')`` (``x'`` in -1..1); the first self-attention averages the
    tokens, whose first feature is then positive exactly when the box's centre is right of the middle;
    LayerNorm makes it +-4 and the mask token's hypernetwork turns that into the weights (4, 0) or (0, 4) of
    the two mask channels."""
    torch.manual_seed(0)
    sam = build_custom_sam(SAM_ARCH)
    patch = SAM_ARCH.patch_size
    half = SAM_ARCH.image_size // patch // 2
    with torch.no_grad():
        encoder = sam.image_encoder
        kernel = torch.zeros_like(encoder.patch_embed.proj.weight)
        kernel[0, 0] = kernel[0, 2] = 1 / (patch * patch)  # vividness: mean(R + B - 2G) over the block
        kernel[0, 1] = -2 / (patch * patch)
        encoder.patch_embed.proj.weight.copy_(kernel)
        bias = torch.zeros_like(encoder.patch_embed.proj.bias)
        bias[0] = -SAM_VIVID
        encoder.patch_embed.proj.bias.copy_(bias)
        encoder.pos_embed.zero_()  # (1, rows, columns, channels)
        encoder.pos_embed[0, :, half:, 1] = -SAM_SIDE  # the left copy's offset: off on the right
        encoder.pos_embed[0, :, :half, 2] = -SAM_SIDE  # the right copy's offset: off on the left
        for block in encoder.blocks:  # pass features through
            block.attn.proj.weight.zero_()
            block.attn.proj.bias.zero_()
            block.mlp.lin2.weight.zero_()
            block.mlp.lin2.bias.zero_()
        first, _, second, _ = encoder.neck
        weight = torch.zeros_like(first.weight)
        for out, offset in ((0, 1), (2, 2)):  # (left, -left, right, -right): mean zero
            weight[out, 0] = weight[out, offset] = 1.0
            weight[out + 1, 0] = weight[out + 1, offset] = -1.0
        first.weight.copy_(weight)
        weight = torch.zeros_like(second.weight)
        for c in range(4):
            weight[c, c, 1, 1] = 1.0
        second.weight.copy_(weight)

        prompt = sam.prompt_encoder
        prompt.no_mask_embed.weight.zero_()
        frequencies = prompt.pe_layer.positional_encoding_gaussian_matrix
        frequencies.zero_()
        frequencies[0, 0] = 0.125
        for embedding in prompt.point_embeddings:
            embedding.weight.zero_()
        decoder = sam.mask_decoder
        decoder.iou_token.weight.zero_()
        decoder.mask_tokens.weight.zero_()
        averaging = decoder.transformer.layers[0].self_attn  # no query or key: every token the mean
        for linear in (averaging.q_proj, averaging.k_proj, averaging.v_proj, averaging.out_proj):
            linear.weight.zero_()
            linear.bias.zero_()
        averaging.v_proj.weight[0, 0] = 1.0
        averaging.out_proj.weight[0, 0], averaging.out_proj.weight[1, 0] = 100.0, -100.0
        transformer = decoder.transformer
        attentions = [transformer.final_attn_token_to_image]
        for n, layer in enumerate(transformer.layers):
            attentions += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
            attentions += [layer.self_attn] if n else []
            layer.mlp.lin2.weight.zero_()
            layer.mlp.lin2.bias.zero_()
        for attention in attentions:  # nothing else moves a token or the image
            attention.out_proj.weight.zero_()
            attention.out_proj.bias.zero_()
        up1, _, _, up2, _ = decoder.output_upscaling
        weight = torch.zeros_like(up1.weight)  # (in, out, 2, 2)
        for c in range(4):
            weight[c, c] = 1.0
        up1.weight.copy_(weight)
        up1.bias.zero_()
        weight = torch.zeros_like(up2.weight)
        weight[0, 0], weight[1, 0], weight[2, 1], weight[3, 1] = (
            1.0,
            -1.0,
            1.0,
            -1.0,
        )  # GELU(x) - GELU(-x) = x
        up2.weight.copy_(weight)
        up2.bias.zero_()
        for mlp in decoder.output_hypernetworks_mlps:
            for linear in mlp.layers:
                linear.weight.zero_()
                linear.bias.zero_()
            inner, middle, last = mlp.layers
            inner.weight[0, 0], inner.weight[1, 0] = 1.0, -1.0  # (right, left), each 4 or 0
            middle.weight[0, 1], middle.weight[1, 0] = 1.0, 1.0  # (left, right)
            last.weight[0, 0], last.weight[1, 1] = 1.0, 1.0  # the mask channels' weights
    return sam


def tiny_sam(directory: Path) -> SegmenterConfig:
    """:func:`side_sam` saved as a state dict, and the segmenter config that loads it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sam_side.pth"
    torch.save(side_sam().state_dict(), path)
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


# ------------------------------------------------------------------------------------ Grounding DINO

DINO_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "photo", "of", "red", "blue", "square"]


def tiny_grounding_dino(directory: Path, seed: int = 0) -> Path:
    """A ``GroundingDinoForObjectDetection`` of tiny sizes (a two-stage Swin backbone, a one-layer BERT
    over :data:`DINO_WORDS`, 16 queries) with random weights, saved with ``save_pretrained`` with its
    processor (64-pixel images) as a hub checkpoint is."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(DINO_WORDS) + "\n")
    backbone = SwinConfig(
        image_size=64,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 1],
        window_size=4,
        out_features=["stage1", "stage2"],
    )
    text = BertConfig(
        vocab_size=len(DINO_WORDS),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # transformers ties the box heads of the decoder layers: at least two
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=16,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=32,
    )
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(directory)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 48, "longest_edge": 64}),
        tokenizer=BertTokenizer(str(vocab), do_lower_case=True),
    )
    processor.save_pretrained(directory)
    return directory
