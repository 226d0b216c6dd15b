"""SAM through the ``segment-anything`` package: a local checkpoint and ``SamAutomaticMaskGenerator``.

Registry names (``vit_h``, ``vit_l``, ``vit_b``) build the published architectures through
``sam_model_registry``; ``custom`` builds one from :class:`SamArchitecture` (the tests' tiny SAM).
Weights are a state dict read with ``torch.load(weights_only=True)``, never unpickled.
"""

from __future__ import annotations

import os
import threading
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ieiw.pipelines.replacement.records import Region, mask_region_id, unique_regions
from ieiw.storage.config import model_ref, operational


class SamArchitecture(BaseModel):
    """The sizes of a SAM built from ``segment_anything.modeling`` parts (``model_type: custom``)."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: list[int] = Field(default_factory=lambda: [2, 5, 8, 11])
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


class SamConfig(BaseModel):
    """A SAM checkpoint and ``SamAutomaticMaskGenerator``'s settings (its published defaults)."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = model_ref(None)
    model_type: Literal["vit_h", "vit_l", "vit_b", "custom"] = "vit_h"
    architecture: SamArchitecture | None = None  # for model_type custom
    device: str = operational("auto")
    points_per_side: int = 32
    points_per_batch: int = operational(64)  # only cuts the prompts into batches
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def generator_settings(self) -> dict[str, Any]:
        """The keyword arguments of ``SamAutomaticMaskGenerator``."""
        return self.model_dump(exclude={"checkpoint", "model_type", "architecture", "device"})


def build_custom_sam(arch: SamArchitecture):
    """A SAM of the given sizes from ``segment_anything.modeling`` parts (random weights)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.image_size // arch.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth,
            embed_dim=arch.encoder_embed_dim,
            img_size=arch.image_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(config: SamConfig):
    """Build the architecture, then load the checkpoint's state dict safely."""
    from segment_anything import sam_model_registry

    if not config.checkpoint:
        raise ValueError("proposer.sam.checkpoint is required: a local SAM checkpoint (.pth state dict)")
    if not os.path.isfile(config.checkpoint):
        raise FileNotFoundError(f"SAM checkpoint not found: {config.checkpoint}")
    if config.model_type == "custom":
        if config.architecture is None:
            raise ValueError("proposer.sam.model_type 'custom' needs proposer.sam.architecture")
        model = build_custom_sam(config.architecture)
    else:
        model = sam_model_registry[config.model_type](checkpoint=None)
    state = torch.load(config.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    device = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
    return model.to("cpu" if device == "auto" else device).eval()


class SamProposer:
    """``SamAutomaticMaskGenerator`` over one image at a time; prompts go through SAM in batches."""

    name = "sam"

    def __init__(self, config: SamConfig) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        self.config = config
        self.model = load_sam(config)
        self.generator = SamAutomaticMaskGenerator(
            self.model, output_mode="binary_mask", **config.generator_settings()
        )
        self._lock = threading.Lock()  # the predictor holds the current image: batches in threads take turns

    @torch.inference_mode()
    def propose(self, image: np.ndarray) -> list[Region]:
        with self._lock:
            masks = self.generator.generate(image)
        return unique_regions(
            [
                Region(
                    region_id=mask_region_id("sam", m["segmentation"]),
                    predicted_iou=float(m["predicted_iou"]),
                    stability_score=float(m["stability_score"]),
                    mask_array=m["segmentation"],
                    extra={"point_coords": m.get("point_coords"), "crop_box": m.get("crop_box")},
                )
                for m in masks
            ]
        )
