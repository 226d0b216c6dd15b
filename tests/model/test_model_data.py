"""The shard stream: paired crop and flip, weighted sets, counted drops, exact resumption."""

from __future__ import annotations

import io
import itertools
import random
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch
from synthetic_edits import make_sample, write_synthetic_shards

from ieiw.model.data import SourceSet, StreamSettings, StreamState, make_loader, read_shard
from ieiw.model.sample_decode import crop_and_flip, decode_item
from ieiw.storage import fs
from ieiw.storage.shards import ShardSpec, encode_sample, shard_index, shard_samples


def test_source_and_target_get_the_same_crop_and_flip():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)  # short side already 32: crop only
    tgt = 255 - src  # any pixel of the target is known from the same pixel of the source
    seen = set()
    for seed in range(30):
        a, b = crop_and_flip(src, tgt, 32, True, random.Random(seed))
        assert a.shape == b.shape == (32, 32, 3)
        np.testing.assert_array_equal(b, 255 - a)
        for flipped, image in ((False, src), (True, src[:, ::-1])):
            seen.update((flipped, x) for x in range(17) if np.array_equal(image[:, x : x + 32], a))
    assert {f for f, _ in seen} == {False, True}  # both flipped and unflipped crops
    assert len({x for _, x in seen}) > 5  # crops move


def test_decode_item_applies_one_crop_to_both(edit_shards):
    sample = make_sample(np.random.default_rng(5), 0, size=32)
    sample.target = 255 - sample.source
    raw = {"__key__": sample.key, "__text_field__": "instruction", **encode_sample(sample, ShardSpec())}
    drops: Counter = Counter()
    item = decode_item(raw, random.Random(3), StreamSettings(resolution=24), drops)
    assert item["src"].shape == (3, 24, 24) and item["text"] == sample.meta.instruction
    torch.testing.assert_close(item["tgt"], -item["src"], atol=1.01 / 127.5, rtol=0)  # bicubic rounding
    assert not drops


def _batches(sets, state, n, **settings):
    loader = make_loader(
        sets,
        StreamSettings(
            **{"resolution": 24, "batch_size": 4, "shuffle_buffer": 8, "shards_per_block": 2, **settings}
        ),
        state,
    )
    out = []
    for batch in itertools.islice(iter(loader), n):
        state.advance(batch)
        out.append(batch)
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_continues_exactly(edit_shards, workers):
    sets = [SourceSet([str(p) for p in sorted(edit_shards.glob("*.tar"))])]
    straight = _batches(sets, StreamState(workers), 12)
    state = StreamState(workers)
    first = _batches(sets, state, 7)
    resumed = StreamState.from_json(state.to_json())  # what a checkpoint keeps
    rest = _batches(sets, resumed, 5)
    for got, want in zip(first + rest, straight, strict=True):
        assert got["key"] == want["key"]
        torch.testing.assert_close(got["src"], want["src"])
        torch.testing.assert_close(got["tgt"], want["tgt"])
    assert len({k for b in straight for k in b["key"]}) > 20  # the stream does go through the data


def test_weighted_sets_and_text_fields(tmp_path):
    a = write_synthetic_shards(str(tmp_path / "a"), 24, 12, seed=1, split="a")
    b = write_synthetic_shards(str(tmp_path / "b"), 24, 12, seed=2, split="b")
    sets = [SourceSet(a, 1.0, "instruction"), SourceSet(b, 3.0, "pretrain_caption")]
    batches = _batches(sets, StreamState(0), 40, shards_per_block=1, shuffle_buffer=4)
    texts = [t for batch in batches for t in batch["text"]]
    captions = sum(t.startswith("a ") for t in texts)  # pretrain captions read "a red circle"
    assert 0.6 < captions / len(texts) < 0.9
    assert any(t.startswith("make the ") for t in texts)


def test_bad_samples_are_counted_not_fatal(tmp_path):
    rng = np.random.default_rng(0)
    good = [make_sample(rng, i) for i in range(6)]
    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tar:

        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for i, sample in enumerate(good):
            members = encode_sample(sample, ShardSpec())
            if i == 1:
                members["src.png"] = b"not a png"
            if i == 2:
                del members["tgt.png"]
            if i == 3:
                sample.meta.pretrain_caption = None
                members["json"] = sample.meta.model_dump_json().encode()
            for ext, data in members.items():
                add(f"{sample.key}.{ext}", data)
    sets = [SourceSet([str(shard)], 1.0, "pretrain_caption")]
    batch = _batches(sets, StreamState(0), 1, batch_size=3, shards_per_block=1, shuffle_buffer=1)[0]
    assert len(batch["key"]) == 3
    assert batch["drops"] == {"undecodable": 1, "missing-member": 1, "missing-text": 1}


def test_empty_shards_raise_a_clear_error(tmp_path):
    shard = tmp_path / "empty.tar"
    with tarfile.open(shard, "w"):
        pass
    with pytest.raises(RuntimeError, match="held no samples"):
        _batches([SourceSet([str(shard)])], StreamState(0), 1)


def test_a_truncated_shard_is_counted_and_the_stream_goes_on(tmp_path):
    """The trainer reads through the one shard reader, lenient: the samples before the damage train, the
    damage is a counted drop, and the next block reads on."""
    (whole,) = write_synthetic_shards(str(tmp_path / "whole"), 8, 8, seed=3)
    complete = [r["__key__"] for r in shard_samples(whole)]
    fourth = next(m for m in shard_index(whole) if m.key == complete[3])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(fs.read_bytes(whole)[: fourth.offset + fourth.size // 2])  # inside its first member
    drops: Counter = Counter()
    assert [r["__key__"] for r in read_shard(str(cut), "instruction", drops)] == complete[:3]
    assert drops["unreadable-shard"] >= 1
    batches = _batches([SourceSet([str(cut)])], StreamState(0), 6, batch_size=2, shards_per_block=1)
    assert {k for b in batches for k in b["key"]} == set(complete[:3])
    assert batches[-1]["drops"]["unreadable-shard"] >= 3  # every block that read the shard counted it


def test_the_stream_reads_fsspec_urls_as_it_reads_files(tmp_path):
    """The same shards under ``memory://`` and on disk give the same batches for a seed; another seed or
    another rank gives another order of the same data."""
    local = write_synthetic_shards(str(tmp_path / "local"), 24, 6, seed=4)
    remote = write_synthetic_shards("memory://stream-test/shards", 24, 6, seed=4)
    assert remote[0].startswith("memory://")

    def keys(urls, **settings):
        # one shard a block: fsspec's memory file system hands every open of a path the same file object
        batches = _batches([SourceSet(urls)], StreamState(0), 8, shards_per_block=1, **settings)
        return [k for b in batches for k in b["key"]]

    assert keys(remote) == keys(local) == keys(local)
    for other in ({"seed": 1}, {"rank": 1}):
        assert keys(local, **other) != keys(local)
