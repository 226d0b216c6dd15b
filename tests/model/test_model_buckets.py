"""Aspect-ratio buckets: a few shapes of about one area, each sample in the closest, one shape per batch,
source and target cropped alike, no aspect ratio changed by more than the buckets' step; resumable;
the latent cache keyed by them; and the session filter of the stream."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from shaped_edits import write_shaped_shards

from ieiw.model.buckets import Buckets, cover_size, crop_pair
from ieiw.model.conditioning import SIZE_COND
from ieiw.model.data import SourceSet, StreamSettings, StreamState, make_loader
from ieiw.model.latent_cache import build_latent_cache, cache_fingerprint
from ieiw.storage.stage_folder import read_record


def test_buckets_are_a_few_shapes_of_about_one_area():
    buckets = Buckets.make(512, step=64, max_aspect=2.0)
    assert buckets.shapes == ((640, 384), (576, 448), (512, 512), (448, 576), (384, 640))
    for h, w in buckets.shapes:
        assert h % 64 == 0 and w % 64 == 0 and max(h / w, w / h) <= 2.0
        assert 0.9 * 512 * 512 <= h * w <= 512 * 512
    assert buckets.closest(1000, 1000) == (512, 512) and buckets.closest(1600, 900) == (384, 640)
    assert buckets.closest(300, 1000) == (640, 384)  # beyond the range: the extreme shape
    with pytest.raises(ValueError):
        Buckets.make(500, step=64)


@pytest.mark.parametrize("resolution,step", [(512, 64), (1024, 64), (24, 8)])
def test_no_aspect_ratio_is_distorted_by_more_than_the_bucket_step(resolution, step):
    buckets = Buckets.make(resolution, step)
    low, high = min(buckets.aspects), max(buckets.aspects)
    rng = random.Random(0)
    for _ in range(300):
        aspect = math.exp(rng.uniform(math.log(low), math.log(high)))
        height = rng.randint(resolution // 2, 3 * resolution)
        width = max(1, round(height * aspect))
        shape = buckets.closest(width, height)
        assert abs(math.log(width / height) - math.log(shape[1] / shape[0])) <= buckets.aspect_step / 2 + 1e-3
        covered_w, covered_h = cover_size(width, height, shape)
        assert covered_w >= shape[1] and covered_h >= shape[0]
        # one scale for both axes: the pixels are not stretched (up to rounding to whole pixels)
        assert abs(covered_w / width - covered_h / height) <= 1.0 / min(width, height) + 1e-9


def test_source_and_target_are_resized_and_cropped_alike():
    yy, xx = np.mgrid[:90, :150]
    src = np.stack([xx, yy, (xx + yy) // 2], axis=-1).astype(np.uint8)  # smooth: no resampling overshoot
    tgt = src + 40
    shape = Buckets.make(64, 16).closest(150, 90)
    for seed in range(10):
        a, b, ids = crop_pair(src, tgt, shape, True, random.Random(seed))
        assert a.shape[:2] == shape == b.shape[:2]
        assert np.abs(b.astype(int) - a.astype(int) - 40).max() <= 1  # the same pixels, shifted in value
        assert ids[:2] == [90, 150] and ids[4:] == list(shape)


@pytest.fixture(scope="module")
def shaped_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shaped") / "shards"
    write_shaped_shards(str(folder), count=60, per_shard=15, seed=2)
    return folder


def _settings(**overrides) -> StreamSettings:
    values = {
        "resolution": 24,
        "batch_size": 4,
        "shuffle_buffer": 8,
        "shards_per_block": 2,
        "seed": 1,
        "buckets": Buckets.make(24, 8),
    }
    values.update(overrides)
    return StreamSettings(**values)


def _sets(folder) -> list[SourceSet]:
    return [SourceSet([str(p) for p in sorted(folder.glob("*.tar"))])]


def test_each_batch_holds_one_shape_the_closest_to_each_of_its_samples(shaped_shards):
    settings = _settings()
    batches = iter(make_loader(_sets(shaped_shards), settings, StreamState(0)))
    seen: Counter = Counter()
    for _ in range(30):
        batch = next(batches)
        shape = tuple(batch["src"].shape[-2:])
        assert batch["src"].shape == batch["tgt"].shape and shape in settings.buckets.shapes
        for ids in batch[SIZE_COND].tolist():
            original_h, original_w = ids[0], ids[1]
            assert settings.buckets.closest(original_w, original_h) == shape and tuple(ids[4:]) == shape
        seen[shape] += len(batch["key"])
    assert len(seen) == 3  # tall, square and wide photos each train in their own bucket


@pytest.mark.parametrize("consumed", [3, 6, 7, 9])
def test_a_bucketed_stream_resumes_exactly(shaped_shards, consumed):
    """Mid-block, at a block's leftover batches and after them: the resumed stream is the same stream."""
    settings = _settings()
    straight = iter(make_loader(_sets(shaped_shards), settings, StreamState(0)))
    state = StreamState(0)
    for _ in range(consumed):
        state.advance(next(straight))
    expected = [next(straight) for _ in range(6)]
    resumed = iter(make_loader(_sets(shaped_shards), settings, StreamState.from_json(state.to_json())))
    for want in expected:
        got = next(resumed)
        assert got["key"] == want["key"]
        torch.testing.assert_close(got["src"], want["src"])
        torch.testing.assert_close(got[SIZE_COND], want[SIZE_COND])


def test_the_latent_cache_is_keyed_by_the_buckets(tiny_base, shaped_shards, tmp_path):
    from small_training import small_config

    from ieiw.model.build import build_models

    models = build_models(small_config(tiny_base, shaped_shards, tmp_path))
    buckets = Buckets.make(24, 8)
    square = cache_fingerprint(str(tiny_base), 24)
    bucketed = cache_fingerprint(str(tiny_base), 24, buckets=buckets)
    assert square.digest != bucketed.digest and bucketed.settings["buckets"] == buckets.to_json()
    result = build_latent_cache(models.vae, [str(shaped_shards)], str(tmp_path / "cache"), bucketed)
    assert result.folder.rsplit("/", 1)[-1].startswith("b24-") and result.counts["cached"] == 60
    assert read_record(result.folder)["fingerprint"]["settings"]["buckets"] == buckets.to_json()
    settings = _settings(buckets=buckets)
    batches = iter(make_loader([SourceSet(result.urls([str(shaped_shards)]))], settings, StreamState(0)))
    shapes = set()
    for _ in range(12):
        batch = next(batches)
        shape = tuple(s * 2 for s in batch["src_lat"].shape[-2:])  # the tiny VAE halves each side
        assert batch["tgt_lat"].shape == batch["src_lat"].shape and shape in buckets.shapes
        for ids in batch[SIZE_COND].tolist():
            assert buckets.closest(ids[1], ids[0]) == shape
        shapes.add(shape)
    assert len(shapes) == 3


@pytest.mark.parametrize("mode,turns", [("all", {-1, 0, 1, 2}), ("turns", {-1, 1, 2}), ("whole", {-1, 0})])
def test_the_trainer_samples_single_turns_or_whole_sessions(tmp_path, mode, turns):
    folder = tmp_path / "sessions"
    write_shaped_shards(str(folder), count=32, per_shard=8, sessions=True, sizes=((32, 32),))
    from ieiw.storage.shards import iter_metas

    turn_of = {m.key: m.turn for m in iter_metas([str(folder)])}
    for buckets in (None, Buckets.make(24, 8)):
        batches = iter(make_loader(_sets(folder), _settings(sessions=mode, buckets=buckets), StreamState(0)))
        seen = {turn_of[k] for _ in range(12) for k in next(batches)["key"]}
        assert seen == turns
