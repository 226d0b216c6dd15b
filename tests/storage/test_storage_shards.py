import glob

import numpy as np
import pytest
import webdataset as wds

from ieiw.storage import fs
from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, sample_key
from ieiw.storage.shards import ShardSpec, ShardWriter, encode_sample, iter_samples


def make_sample(i: int, size: int = 32) -> Sample:
    rng = np.random.default_rng(i)
    prov = Provenance(dataset="test", image_id=str(i))
    gen = GeneratorInfo(name="g", backend="b")
    meta = SampleMeta(
        key=sample_key("remove", prov, gen),
        task="remove",
        instruction=f"remove thing {i}",
        provenance=prov,
        generator=gen,
        record_id=f"r{i}",
    )
    src = rng.integers(0, 255, (size, size + 8, 3), dtype=np.uint8)
    mask = np.zeros((size, size + 8), np.uint8)
    mask[4:10, 4:12] = 255
    return Sample(meta, src, 255 - src, mask)


@pytest.mark.parametrize("root", ["memory://shards-test", "local"])
def test_round_trip_local_and_fsspec(root, tmp_path):
    root = str(tmp_path) if root == "local" else root
    samples = [make_sample(i) for i in range(5)]
    with ShardWriter(root, "part", ShardSpec(max_samples=2)) as writer:
        for s in samples:
            writer.write(s)
    assert [len(s.keys) for s in writer.written] == [2, 2, 1]
    back = list(iter_samples(root))
    assert [b.key for b in back] == [s.key for s in samples]
    for a, b in zip(samples, back):
        assert np.array_equal(a.source, b.source) and np.array_equal(a.target, b.target)
        assert np.array_equal(a.mask, b.mask) and a.meta == b.meta


def test_shards_are_bounded_by_bytes(tmp_path):
    samples = [make_sample(i, size=64) for i in range(6)]
    one = sum(len(v) for v in encode_sample(samples[0], ShardSpec()).values())
    with ShardWriter(str(tmp_path), "b", ShardSpec(max_bytes=int(one * 2.5) + 4096)) as writer:
        for s in samples:
            writer.write(s)
    sizes = [len(s.keys) for s in writer.written]
    assert sum(sizes) == 6 and max(sizes) <= 2 and len(sizes) >= 3


def test_the_webdataset_library_reads_our_shards(tmp_path):
    samples = [make_sample(i) for i in range(3)]
    with ShardWriter(str(tmp_path), "wds") as writer:
        for s in samples:
            writer.write(s)
    dataset = wds.WebDataset(sorted(glob.glob(str(tmp_path / "*.tar"))), shardshuffle=False).decode("rgb8")
    rows = list(dataset)
    assert [r["__key__"] for r in rows] == [s.key for s in samples]
    assert rows[0]["src.png"].shape == samples[0].source.shape
    assert rows[0]["json"]["instruction"] == "remove thing 0"


def test_a_failed_writer_leaves_no_shard_and_no_temporary(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(str(tmp_path), "boom") as writer:
        writer.write(make_sample(0))
        raise RuntimeError("killed mid-shard")
    assert list(tmp_path.iterdir()) == []


def test_a_shard_being_written_is_a_hidden_temporary_until_it_is_complete(tmp_path):
    """Mid-write the folder holds only the writer's own hidden temporary, which no reader takes for a
    shard; closing renames it; a writer that dies mid-shard leaves only a temporary, which the cleanup
    removes."""
    writer = ShardWriter(str(tmp_path), "ok")
    writer.write(make_sample(0))
    (temporary,) = [p.name for p in tmp_path.iterdir()]
    assert temporary.startswith(".ok-0000.tar.tmp-")
    assert list(iter_samples(str(tmp_path))) == []
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["ok-0000.tar"]
    assert [s.key for s in iter_samples(str(tmp_path))] == [make_sample(0).key]

    abandoned = ShardWriter(str(tmp_path), "killed")
    abandoned.write(make_sample(1))
    abandoned._handle.flush()  # what a killed process leaves: the bytes so far, under the hidden name
    assert [s.key for s in iter_samples(str(tmp_path))] == [make_sample(0).key]
    assert fs.remove_stale_temporaries(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ok-0000.tar"]
