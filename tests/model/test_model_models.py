"""The base checkpoint loads through the trainer's loader, and the widened UNet is InstructPix2Pix's."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from small_training import small_config

from ieiw.model.build import build_models, widen_conv_in
from ieiw.model.inference import EditSettings, edit_image, load_edit_pipeline


def test_build_models_widens_the_unet_and_freezes_the_rest(tiny_base, edit_shards, tmp_path):
    base_unet = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")
    models = build_models(small_config(tiny_base, edit_shards, tmp_path))
    conv = models.unet.conv_in
    assert conv.in_channels == 8 and models.unet.config.in_channels == 8
    assert torch.equal(conv.weight[:, :4], base_unet.conv_in.weight)
    assert torch.count_nonzero(conv.weight[:, 4:]) == 0
    assert torch.equal(conv.bias, base_unet.conv_in.bias)
    assert not any(p.requires_grad for p in models.vae.parameters())
    assert not any(p.requires_grad for p in models.text_encoder.parameters())
    assert all(p.requires_grad for p in models.unet.parameters())
    assert all(isinstance(p, AttnProcessor2_0) for p in models.unet.attn_processors.values())
    assert models.ema is not None


def test_widened_unet_starts_as_the_base_model(tiny_base):
    """Zero-initialised source channels: at step 0 the source image changes nothing."""
    base = UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet").eval()
    wide = widen_conv_in(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet")).eval()
    x, source = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    t, text = torch.tensor([10, 500]), torch.randn(2, 16, 32)
    with torch.no_grad():
        expected = base(x, t, text).sample
        got = wide(torch.cat([x, source], 1), t, text).sample
    torch.testing.assert_close(got, expected)
    assert widen_conv_in(wide) is wide  # already 8 channels: unchanged


def test_eight_channel_pipeline_saves_and_reloads(tiny_base, tmp_path):
    unet = widen_conv_in(UNet2DConditionModel.from_pretrained(tiny_base, subfolder="unet"))
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(tiny_base, unet=unet, safety_checker=None,
                                                                  requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "ip2p")
    reloaded = load_edit_pipeline(str(tmp_path / "ip2p"), device="cpu")
    assert reloaded.unet.config.in_channels == 8
    image = np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    out = edit_image(reloaded, image, "make the circle red", EditSettings(steps=2, resolution=32))
    assert out.dtype == np.uint8 and out.shape == (32, 24, 3)  # long side 32, sides multiples of 4
