"""Tiny models of the real judge and verifier classes, saved with ``save_pretrained`` and loaded back
through the production loaders (``from_pretrained``).

- :func:`tiny_qwen2_vl`: a random ``Qwen2VLForConditionalGeneration`` with a real ``Qwen2VLProcessor``
  (a byte-level BPE tokenizer with Qwen's special tokens, the image processor, a Qwen-style chat
  template). Its answers are noise: the tests check what it is given and that noise is handled.
- :func:`tiny_owlv2`: an ``Owlv2ForObjectDetection`` + ``Owlv2Processor`` whose weights are set so
  the outcome is known: its transformer layers pass features through, a patch's feature says how red
  and how blue it is, the queries "red ..." and "blue ..." point the same way, and the box head puts
  each patch's box on its own cell. So it finds a planted red (or blue) square where it is, and
  nothing on a grey background.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OWL_WORDS = ["a", "the", "photo", "of", "square", "circle", "thing", "object", "red", "blue"]  # colours last
OWL_SIZE = 64  # the detector's input side: 8 x 8 patches of 8 pixels


def tiny_qwen2_vl(directory: Path, seed: int = 0) -> Path:
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]})
    tokenizer.add_tokens([QWEN_SPECIAL[0]], special_tokens=True)
    ids = dict(zip(QWEN_SPECIAL, tokenizer.convert_tokens_to_ids(QWEN_SPECIAL), strict=True))
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_TEMPLATE,
    )
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "embed_dim": 32,
            "hidden_size": 32,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _clip_bpe(directory: Path) -> tuple[Path, Path, dict[str, int]]:
    """A CLIP BPE vocabulary of letters and :data:`OWL_WORDS` (colour words get the highest ids, so the
    text tower's pooling, at the highest id of a query, reads the colour)."""
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    add("!")  # id 0 never starts a query (OWLv2 takes a first token 0 for padding)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        add(letter)
        add(letter + "</w>")
    add("<|startoftext|>")
    add("<|endoftext|>")
    merges: list[str] = []
    for word in OWL_WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merge = f"{parts[0]} {parts[1]}"
            if merge not in merges:
                merges.append(merge)
            parts = [parts[0] + parts[1]] + parts[2:]
            if len(parts) > 1:
                add(parts[0])
    for word in OWL_WORDS:
        add(word + "</w>")
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory / "vocab.json", directory / "merges.txt", vocab


def tiny_owlv2(directory: Path, seed: int = 0) -> Path:
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
            "patch_size": 8,
        },
        projection_dim=width,
    )
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config)
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
        kernel = torch.zeros(width, 3, 8, 8)
        kernel[0, 0], kernel[0, 1] = 1 / 64, -1 / 64  # redness: mean(R - G) over the patch
        kernel[1, 2], kernel[1, 1] = 1 / 64, -1 / 64  # blueness: mean(B - G)
        vision.patch_embedding.weight.copy_(kernel)
        vision.position_embedding.weight.zero_()
        vision.position_embedding.weight[1:, 2] = 1.0
        model.owlv2.vision_model.post_layernorm.bias.fill_(1.0)  # the class token's output: all ones
        model.class_head.dense0.weight.copy_(torch.eye(width))
        model.class_head.dense0.bias.zero_()
        model.class_head.logit_shift.weight.zero_()
        model.class_head.logit_shift.bias.fill_(-0.8)  # cosine 1 -> logit 4; a grey patch (0.42) -> -7.6
        model.class_head.logit_scale.weight.zero_()
        model.class_head.logit_scale.bias.fill_(19.0)
        model.box_head.dense2.weight.zero_()  # each patch's box is its own cell
        model.box_head.dense2.bias.zero_()
    image_processor = Owlv2ImageProcessor(
        size={"height": OWL_SIZE, "width": OWL_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    model.save_pretrained(directory)
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def grey(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A grey photo with a little noise: nothing in it looks red or blue."""
    rng = np.random.default_rng(seed)
    return (np.full((height, width, 3), 124) + rng.integers(0, 8, (height, width, 3))).astype(np.uint8)


def with_square(image: np.ndarray, colour: str, top: int = 10, left: int = 30, size: int = 24) -> np.ndarray:
    out = image.copy()
    out[top : top + size, left : left + size] = {"red": (220, 30, 30), "blue": (30, 30, 220)}[colour]
    return out


def square_mask(shape: tuple[int, int], top: int = 10, left: int = 30, size: int = 24) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[top : top + size, left : left + size] = 255
    return mask
