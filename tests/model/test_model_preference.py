"""The preference stage (Diffusion-DPO) of the trainer: the loss against a hand computation, one step on a
fixed batch for the tiny SD 1.5 and SDXL editing models, a flipped label, the frozen reference, resume with
the latent cache, the Diffusion-DPO Hugging Face layout, and the output in diffusers' editing pipelines."""

from __future__ import annotations

import copy
import csv
import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionXLInstructPix2PixPipeline
from preference_data import JUDGE, REWARD_MODEL
from safetensors.torch import load_file
from small_training import small_config
from tiny_sdxl import save_tiny_sdxl_base

from ieiw.model.build import build_models
from ieiw.model.conditioning import null_conditioning
from ieiw.model.config import TrainConfig
from ieiw.model.curriculum import plan_stages, run_curriculum
from ieiw.model.data import (
    SourceSet,
    StreamSettings,
    StreamState,
    count_shard_samples,
    expand_urls,
    make_loader,
    read_shard,
)
from ieiw.model.dpo import dpo_loss, preference_step, reference_unet
from ieiw.model.dpo_layout import DPO_SCHEMA, REJECTED
from ieiw.model.latent_cache import build_latent_cache, cache_fingerprint
from ieiw.model.trainer import train
from ieiw.storage.images import encode_image
from ieiw.storage.shards import iter_samples, member

SEED = 11  # the generator of the fixed batch's noise, timesteps and dropout


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory):
    return save_tiny_sdxl_base(tmp_path_factory.mktemp("tiny-sdxl"))


def _batch(urls, batch_size: int = 4) -> dict:
    settings = StreamSettings(resolution=24, batch_size=batch_size, rejected=True)
    return next(iter(make_loader([SourceSet(expand_urls(urls))], settings, StreamState(0))))


def _setup(base, stage, tmp_path, **overrides):
    config = small_config(base, stage, tmp_path, objective="preference", **overrides)
    models = build_models(config)
    reference = reference_unet(models.unet, torch.float32, "cpu")
    return config, models, reference, null_conditioning(models, "cpu")


def _step(config, models, unet, reference, batch, null, seed=SEED):
    generator = torch.Generator().manual_seed(seed)
    return preference_step(config, models, unet, reference, batch, null, generator, "cpu")


def _margin(config, models, reference, batch, null) -> float:
    with torch.no_grad():
        return _step(config, models, models.unet, reference, batch, null).stats.reward_margin.item()


def test_the_loss_is_a_hand_computation_from_the_four_errors():
    chosen = torch.tensor([0.30, 0.50, 0.20])
    rejected = torch.tensor([0.40, 0.45, 0.20])
    ref_chosen = torch.tensor([0.32, 0.49, 0.25])
    ref_rejected = torch.tensor([0.38, 0.47, 0.20])
    beta = 50.0
    loss, stats = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
    logits = [
        -beta / 2 * ((w - wr) - (lo - lr))
        for w, lo, wr, lr in zip(
            chosen.tolist(), rejected.tolist(), ref_chosen.tolist(), ref_rejected.tolist()
        )
    ]
    expected = sum(-math.log(1 / (1 + math.exp(-z))) for z in logits) / len(logits)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert logits[0] > 0 and logits[1] < 0 and logits[2] > 0  # 1.0, -0.75, 1.25
    assert stats.implicit_accuracy.item() == pytest.approx(2 / 3)
    assert stats.reward_margin.item() == pytest.approx(sum(logits) / 3, rel=1e-5)
    assert stats.chosen_error.item() == pytest.approx(chosen.mean().item())
    assert stats.ref_rejected_error.item() == pytest.approx(ref_rejected.mean().item())
    tie, tie_stats = dpo_loss(chosen, rejected, chosen, rejected, beta)  # the policy is the reference
    assert tie.item() == pytest.approx(math.log(2)) and tie_stats.implicit_accuracy.item() == 0.5


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_one_step_raises_the_margin_on_its_batch(family, tiny_base, sdxl_base, preferences, tmp_path):
    """The same noise, timesteps and dropout (one seed) before and after one optimiser step: the policy
    starts as the reference (margin 0) and the step moves it towards the chosen edits."""
    base = tiny_base if family == "sd15" else sdxl_base
    config, models, reference, null = _setup(base, preferences["stage"], tmp_path)
    batch = _batch([preferences["stage"]])
    assert batch["rej"].shape == batch["tgt"].shape == batch["src"].shape == (4, 3, 24, 24)
    before = _margin(config, models, reference, batch, null)
    assert abs(before) < 1e-3, f"the policy starts as the reference (seed {SEED}): margin {before}"
    optimizer = torch.optim.AdamW(models.unet.parameters(), lr=config.optim.learning_rate)
    result = _step(config, models, models.unet, reference, batch, null)
    assert result.loss.item() == pytest.approx(math.log(2), abs=1e-3)
    result.loss.backward()
    optimizer.step()
    after = _margin(config, models, reference, batch, null)
    assert after > before + 1e-2, f"{family}, seed {SEED}: the margin went from {before} to {after}"


def test_the_reference_gets_no_gradient_and_never_changes(tiny_base, preferences, tmp_path):
    config, models, reference, null = _setup(tiny_base, preferences["stage"], tmp_path)
    start = copy.deepcopy(reference.state_dict())
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    optimizer = torch.optim.AdamW(models.unet.parameters(), lr=1e-3)
    for seed in (SEED, SEED + 1):
        _step(
            config, models, models.unet, reference, _batch([preferences["stage"]]), null, seed
        ).loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in reference.parameters())
    assert any(p.grad is not None for p in models.unet.parameters())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, start[name]), name
    assert not torch.equal(models.unet.conv_in.weight, reference.conv_in.weight)  # the policy moved


def test_a_flipped_label_reverses_the_update(tiny_base, preferences, tmp_path):
    """Cached latents (the preference cache holds the rejected edits), so swapping chosen and rejected
    changes nothing else: the gradient is negated, and so is the step's effect on the margin."""
    config, models, reference, null = _setup(tiny_base, preferences["stage"], tmp_path)
    fingerprint = cache_fingerprint(str(tiny_base), 24, rejected=True)
    cache = build_latent_cache(models.vae, [str(preferences["stage"])], str(tmp_path / "cache"), fingerprint)
    assert cache.counts == {"cached": 16, "shards_cached": 4}
    batch = _batch(cache.urls([str(preferences["stage"])]))
    assert {"src_lat", "tgt_lat", "rej_lat"} <= set(batch) and "tgt" not in batch
    flipped = {**batch, "tgt_lat": batch["rej_lat"], "rej_lat": batch["tgt_lat"]}
    start = copy.deepcopy(models.unet.state_dict())

    def one_step(which: dict) -> tuple[dict, float]:
        models.unet.load_state_dict(start)
        models.unet.zero_grad(set_to_none=True)
        optimizer = torch.optim.AdamW(models.unet.parameters(), lr=1e-4)
        _step(config, models, models.unet, reference, which, null).loss.backward()
        grads = {n: p.grad.clone() for n, p in models.unet.named_parameters() if p.grad is not None}
        optimizer.step()
        return grads, _margin(config, models, reference, batch, null)  # measured on the true labels

    grads, margin = one_step(batch)
    flipped_grads, flipped_margin = one_step(flipped)
    assert grads.keys() == flipped_grads.keys()
    g = torch.cat([grads[n].flatten() for n in sorted(grads)])
    flipped_g = torch.cat([flipped_grads[n].flatten() for n in sorted(grads)])
    residual = ((flipped_g + g).norm() / g.norm()).item()  # the whole gradient is negated, up to rounding
    assert residual < 1e-3, f"seed {SEED}: |g_flipped + g| / |g| = {residual}"
    assert margin > 0 > flipped_margin, f"seed {SEED}: margins {margin} and {flipped_margin}"


def _unet(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def _loss_rows(folder) -> list[dict]:
    with open(folder / "loss.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_preference_training_resumes_identically_from_a_latent_cache(tiny_base, preferences, tmp_path):
    """EMA and the latent cache on; a run stopped after 2 steps and resumed to 4 ends with the weights of
    one that ran 4 straight; it logs the DPO figures and opens in the InstructPix2Pix pipeline."""
    kwargs = {
        "objective": "preference",
        "checkpoint_every": 2,
        "data": {"latent_cache": str(tmp_path / "cache")},
    }
    straight = train(
        small_config(tiny_base, preferences["stage"], tmp_path / "straight", max_steps=4, **kwargs)
    )
    train(small_config(tiny_base, preferences["stage"], tmp_path / "split", max_steps=2, **kwargs))
    split = train(small_config(tiny_base, preferences["stage"], tmp_path / "split", max_steps=4, **kwargs))
    a, b = _unet(straight), _unet(split)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    rows = _loss_rows(split)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) >= {"loss", "implicit_accuracy", "reward_margin", "chosen_error", "rejected_error"}
    assert float(rows[0]["loss"]) == pytest.approx(math.log(2)) and float(rows[0]["reward_margin"]) == 0
    assert rows == _loss_rows(straight)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((straight / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert {"loss", "dpo/implicit_accuracy", "dpo/reward_margin", "dpo/chosen_error"} <= set(
        events.Tags()["scalars"]
    )
    caches = list((tmp_path / "cache").iterdir())
    assert len(caches) == 1  # both runs used one cache, which holds the rejected edits
    assert json.loads((caches[0] / "stage.json").read_text())["fingerprint"]["settings"]["rejected"] is True
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(split))
    assert pipe.unet.config.in_channels == 8


def test_sdxl_trains_on_the_diffusion_dpo_layout_and_opens_in_its_pipeline(sdxl_base, preferences, tmp_path):
    out = train(
        small_config(sdxl_base, preferences["hf"], tmp_path / "run", objective="preference", max_steps=2)
    )
    assert json.loads((out / "data_drops.json").read_text()) == {}
    assert len(_loss_rows(out)) == 2
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(str(out))
    assert pipe.unet.config.in_channels == 8 and pipe.text_encoder_2 is not None


def test_the_diffusion_dpo_layout_reads_as_the_same_pairs(preferences):
    stage = {s.key: s for s in iter_samples([str(preferences["stage"])])}
    urls = expand_urls([str(preferences["hf"])])
    assert urls and all(u.endswith(".parquet") for u in urls)
    read = [raw for url in urls for raw in read_shard(url, "instruction", {})]
    assert sorted(raw["__key__"] for raw in read) == sorted(stage)
    stage_members = {
        key: members
        for url in expand_urls([str(preferences["stage"])])
        for raw in read_shard(url, "instruction", {})
        for key, members in [(raw["__key__"], raw)]
    }
    for raw in read:
        ours = stage_members[raw["__key__"]]
        for stem in ("src", "tgt", REJECTED):  # the label put the chosen edit in tgt again
            assert member(raw, stem) == member(ours, stem), (raw["__key__"], stem)


def test_a_set_trains_only_on_the_pairs_its_choosers_made(preferences):
    choosers = {s.key: s.meta.extra["chooser"] for s in iter_samples([str(preferences["stage"])])}
    assert set(choosers.values()) == {JUDGE.split(":")[0], REWARD_MODEL.split(":")[0]}
    settings = StreamSettings(resolution=24, batch_size=2, rejected=True, shards_per_block=4)
    for kept in ("reward-model", "judge"):
        shard_set = SourceSet(expand_urls([str(preferences["stage"])]), choosers=(kept,))
        stream = iter(make_loader([shard_set], settings, StreamState(0)))
        keys = [k for _ in range(4) for k in next(stream)["key"]]
        assert {choosers[k] for k in keys} == {kept}


def test_a_curriculum_ends_with_a_preference_stage_from_the_stage_before(
    tiny_base, edit_shards, preferences, tmp_path
):
    """The preference stage starts from (and is judged against) the model the stage before it saved."""
    config = TrainConfig.model_validate(
        {
            "base_model": str(tiny_base),
            "output_dir": str(tmp_path / "run"),
            "data": {"resolution": 24, "num_workers": 0, "shuffle_buffer": 16, "shards_per_block": 2},
            "train_batch_size": 2,
            "mixed_precision": "no",
            "log_every": 1,
            "stages": [
                {"name": "edit", "data": [{"urls": [str(edit_shards)]}], "max_steps": 1},
                {
                    "name": "preference",
                    "objective": "preference",
                    "beta": 2500,
                    "learning_rate": 1e-6,
                    "data": [{"urls": [str(preferences["stage"])], "choosers": ["judge"]}],
                    "max_steps": 1,
                },
            ],
        }
    )
    plan = plan_stages(config)
    assert [s.config.objective for s in plan] == ["edit", "preference"]
    preference = plan[1].config
    assert preference.beta == 2500 and preference.optim.learning_rate == 1e-6
    assert preference.base_model == str(plan[0].output_dir)
    assert preference.data.sets[0].choosers == ["judge"]
    summaries = run_curriculum(config)
    assert [s["steps"] for s in summaries] == [1, 1]
    first = _loss_rows(plan[1].output_dir)[0]
    assert float(first["loss"]) == pytest.approx(math.log(2)) and float(first["reward_margin"]) == 0


def test_the_layouts_labels_pick_the_chosen_image_and_ties_are_counted_drops(tmp_path):
    """label_0 1: jpg_0 is preferred; 0: jpg_1 is; Pick-a-Pic's 0.5 (a tie) and no label prefer nothing."""
    images = {
        name: encode_image(np.full((8, 8, 3), value, np.uint8), "png")
        for name, value in (("a", 10), ("b", 200), ("src", 90))
    }
    rows = [
        {
            "caption": "make it dark",
            "jpg_0": images["a"],
            "jpg_1": images["b"],
            "label_0": label,
            "input_image": images["src"],
        }
        for label in (1.0, 0.0, 0.5, None)
    ]
    folder = tmp_path / "dpo" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=DPO_SCHEMA), folder / "train-00000-of-00001.parquet")
    urls = expand_urls([str(tmp_path / "dpo")])
    assert urls == [str(folder / "train-00000-of-00001.parquet")] and count_shard_samples(urls[0]) == 4
    drops = Counter()
    read = list(read_shard(urls[0], "instruction", drops))
    assert dict(drops) == {"preference-tie": 1, "missing-label": 1}
    assert [(member(r, "tgt"), member(r, REJECTED)) for r in read] == [
        (images["a"], images["b"]),
        (images["b"], images["a"]),
    ]
    assert len({r["__key__"] for r in read}) == 2 and all(member(r, "src") == images["src"] for r in read)


def test_under_bf16_the_reference_computes_as_the_policy_does(tiny_base, preferences, tmp_path):
    """bf16 mixed precision (the trainer's accelerate autocast, as torch.autocast here): the reference is
    kept in bf16 and runs under the same autocast as the policy, so at the start (the policy is the
    reference) every pair's logit is exactly zero, and the policy's errors are the reference's."""
    config, models, _, null = _setup(tiny_base, preferences["stage"], tmp_path, mixed_precision="bf16")
    reference = reference_unet(models.unet, torch.bfloat16, "cpu")
    assert next(reference.parameters()).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = _step(config, models, models.unet, reference, _batch([preferences["stage"]]), null)
    stats = result.stats
    assert stats.reward_margin.item() == 0 and stats.implicit_accuracy.item() == 0.5, f"seed {SEED}"
    assert stats.chosen_error.item() == stats.ref_chosen_error.item()
    result.loss.backward()
    assert models.unet.conv_in.weight.grad is not None and models.unet.conv_in.weight.dtype == torch.float32
