"""An SDXL base: both text encoders, the pooled text and size ids, the UNet widened to 8 inputs, the same
CFG dropout; trains with aspect-ratio buckets, resumes identically, saves in diffusers layout, opens in
StableDiffusionXLInstructPix2PixPipeline, and `ieiw edit` / `ieiw evaluate` pick that pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from diffusers import StableDiffusionXLInstructPix2PixPipeline
from PIL import Image
from safetensors.torch import load_file
from shaped_edits import write_shaped_shards
from small_training import small_config
from tiny_diffusion import HIDDEN
from tiny_sdxl import PROJECTION, save_tiny_sdxl_base
from transformers import CLIPTextModelWithProjection
from typer.testing import CliRunner

from ieiw.model.build import build_models
from ieiw.model.conditioning import SIZE_COND, null_conditioning
from ieiw.model.data import SourceSet, StreamSettings, StreamState, make_loader
from ieiw.model.family import model_family
from ieiw.model.inference import EditSettings, edit_image, load_edit_pipeline
from ieiw.model.trainer import train, training_step

BUCKETS = {"buckets": {"step": 8}}  # 24 px area: 32x16, 24x24, 16x32


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory):
    return save_tiny_sdxl_base(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shaped") / "shards"
    write_shaped_shards(str(folder), count=40, per_shard=10, seed=3)
    return folder


@pytest.fixture(scope="module")
def sdxl_model(sdxl_base, shaped, tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("sdxl-run")
    return train(small_config(sdxl_base, shaped, out, max_steps=3, data=BUCKETS))


def _batch(folder) -> dict:
    sets = [SourceSet([str(p) for p in sorted(folder.glob("*.tar"))])]
    return next(iter(make_loader(sets, StreamSettings(resolution=24, batch_size=4), StreamState(0))))


def test_an_sdxl_base_brings_both_text_encoders_and_the_size_ids(sdxl_base, shaped, tmp_path):
    assert model_family(str(sdxl_base)) == "sdxl"
    config = small_config(sdxl_base, shaped, tmp_path, cfg_dropout={"text": 0, "image": 0, "both": 0})
    models = build_models(config)
    assert models.is_sdxl and isinstance(models.text_encoder_2, CLIPTextModelWithProjection)
    assert models.unet.conv_in.in_channels == 8 and models.unet.config.addition_embed_type == "text_time"
    assert models.unet.conv_in.weight[:, 4:].abs().sum() == 0  # the new inputs start at zero
    batch = _batch(shaped)
    seen = {}

    def recording_unet(model_input, timesteps, text, added_cond_kwargs, return_dict=False):
        seen.update(text=text.detach(), **{k: v.detach() for k, v in added_cond_kwargs.items()})
        return models.unet(
            model_input, timesteps, text, added_cond_kwargs=added_cond_kwargs, return_dict=return_dict
        )

    null = null_conditioning(models, "cpu")
    loss = training_step(config, models, recording_unet, batch, null, torch.Generator().manual_seed(0), "cpu")
    assert seen["text"].shape == (4, 16, 2 * HIDDEN)  # both encoders' penultimate states side by side
    assert seen["text_embeds"].shape == (4, PROJECTION)  # the second encoder's pooled projection
    torch.testing.assert_close(seen["time_ids"], batch[SIZE_COND].float())
    assert seen["time_ids"][:, 4:].eq(24).all()  # the crop's size; the original size comes first
    loss.backward()
    assert models.unet.conv_in.weight.grad[:, 4:].abs().sum() > 0


def test_a_dropped_text_is_what_the_sdxl_pipeline_gives_for_none(sdxl_base, shaped, tmp_path):
    """force_zeros_for_empty_prompt (SDXL base's setting): the pipeline's unconditional text is zeros,
    hidden states and pooled alike, so classifier-free dropout trains on zeros too."""
    config = small_config(sdxl_base, shaped, tmp_path, cfg_dropout={"text": 1, "image": 0, "both": 0})
    models = build_models(config)
    assert models.force_zeros_for_empty_prompt
    null = null_conditioning(models, "cpu")
    assert null.hidden.abs().sum() == 0 and null.pooled.abs().sum() == 0
    seen = {}

    def recording_unet(model_input, timesteps, text, added_cond_kwargs, return_dict=False):
        seen["text"], seen["pooled"] = text.detach(), added_cond_kwargs["text_embeds"].detach()
        seen["source"] = model_input[:, 4:].detach()
        return models.unet(
            model_input, timesteps, text, added_cond_kwargs=added_cond_kwargs, return_dict=return_dict
        )

    generator = torch.Generator().manual_seed(0)
    training_step(config, models, recording_unet, _batch(shaped), null, generator, "cpu")
    assert seen["text"].abs().sum() == 0 and seen["pooled"].abs().sum() == 0
    assert (seen["source"].abs().flatten(1).sum(1) > 0).all()  # the image is kept


def _unet(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_sdxl_with_buckets_resumes_identically_and_opens_in_the_sdxl_pipeline(sdxl_base, shaped, tmp_path):
    kwargs = {"data": {"num_workers": 2, **BUCKETS}, "checkpoint_every": 3}
    straight = train(small_config(sdxl_base, shaped, tmp_path / "straight", max_steps=6, **kwargs))
    train(small_config(sdxl_base, shaped, tmp_path / "split", max_steps=4, **kwargs))
    split = train(small_config(sdxl_base, shaped, tmp_path / "split", max_steps=6, **kwargs))
    a, b = _unet(straight), _unet(split)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    index = json.loads((split / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLInstructPix2PixPipeline"
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(str(split))  # no conversion needed
    assert pipe.unet.config.in_channels == 8 and pipe.text_encoder_2 is not None
    opened = load_edit_pipeline(str(split), device="cpu")
    assert isinstance(opened, StableDiffusionXLInstructPix2PixPipeline)
    edited = edit_image(
        opened,
        np.full((24, 40, 3), 120, np.uint8),
        "make the circle red",
        EditSettings(steps=2, resolution=32),
    )
    assert edited.shape == (20, 32, 3)  # the input's shape at the working size, not SDXL's 1024 px


def test_sdxl_trains_from_a_bucketed_latent_cache(sdxl_base, shaped, tmp_path):
    out = train(
        small_config(
            sdxl_base,
            shaped,
            tmp_path / "run",
            max_steps=2,
            data={"latent_cache": str(tmp_path / "cache"), **BUCKETS},
        )
    )
    assert (out / "model_index.json").exists()
    caches = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(caches) == 1 and caches[0].startswith("b24-")


def test_ieiw_edit_and_evaluate_use_the_sdxl_pipeline(sdxl_model, shaped, tiny_clip, tmp_path):
    from ieiw.flows.commands.model import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def cli(*args):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    source = tmp_path / "in.png"
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(source)
    cli(
        "edit",
        "--model",
        sdxl_model,
        "--image",
        source,
        "--instruction",
        "make the circle red",
        "-o",
        tmp_path / "out.png",
        "--steps",
        2,
        "--resolution",
        32,
        "--device",
        "cpu",
    )
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (32, 20)
    name, config_file, weights = tiny_clip
    cli(
        "evaluate",
        "--model",
        sdxl_model,
        "--shards",
        shaped,
        "-o",
        tmp_path / "eval",
        "--limit",
        3,
        "--clip-model",
        name,
        "--clip-pretrained",
        weights,
        "--clip-config-file",
        config_file,
        "--steps",
        2,
        "--resolution",
        32,
        "--device",
        "cpu",
    )
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["samples"] == 3


def test_candidates_of_an_sdxl_model_keep_the_working_size(sdxl_model, shaped, tmp_path):
    from ieiw.model.candidate_shards import iter_candidate_sets
    from ieiw.model.candidates import CandidatesConfig, build_candidates

    config = CandidatesConfig(model=str(sdxl_model), shards=[str(shaped)], n=2, steps=1, resolution=32,
                              limit=2, per_shard=2, device="cpu")
    summary = build_candidates(config, str(tmp_path / "cands"))
    assert summary.rows == 2 and summary.batches == 1
    for candidate_set in iter_candidate_sets(str(tmp_path / "cands")):
        assert all(c.shape == candidate_set.source.shape for c in candidate_set.candidates)
        assert max(candidate_set.source.shape[:2]) == 32  # not SDXL's default 1024 px
