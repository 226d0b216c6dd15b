import glob
import io
import pickle
import tarfile

import numpy as np
import pytest
import webdataset as wds

from ieiw.storage import fs, manifest
from ieiw.storage.commit import commit_batch
from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, sample_key
from ieiw.storage.shards import (
    ShardReadError,
    ShardSpec,
    ShardWriter,
    count_samples,
    decode_sample,
    encode_sample,
    iter_samples,
    iter_shard_samples,
    iter_tar_groups,
    shard_index,
    shard_samples,
)


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


def _same_sample(a: Sample, b: Sample) -> None:
    assert a.meta == b.meta and np.array_equal(a.source, b.source) and np.array_equal(a.target, b.target)
    assert (a.mask is None and b.mask is None) or np.array_equal(a.mask, b.mask)


def _without(raw: dict, *fields: str) -> dict:
    return {k: v for k, v in raw.items() if k not in fields}


def test_webdataset_and_our_reader_read_a_committed_stage_identically(tmp_path):
    """The same tar groups, member for member and byte for byte, from ``webdataset.WebDataset`` and from
    our reader; ours takes the stage's shards from its committed manifest."""
    stage = str(tmp_path / "stage")
    samples = [make_sample(i) for i in range(5)]
    commit_batch(samples, stage, "b-0", ShardSpec(max_samples=2))
    shards = manifest.committed_shards(stage)
    assert len(shards) == 3
    # WebDataset also says where a local file lies (``__local_path__``): a field of where, not of what
    theirs = [_without(r, "__local_path__") for r in wds.WebDataset(shards, shardshuffle=False)]
    ours = list(iter_shard_samples(stage))
    assert [r["__key__"] for r in ours] == [s.key for s in samples]
    assert ours == theirs
    for sample, raw in zip(samples, ours, strict=True):
        _same_sample(sample, decode_sample(raw))
    assert [count_samples(u) for u in shards] == [2, 2, 1]


def test_the_reader_takes_a_stage_s_shards_from_its_manifest_not_its_folder(tmp_path):
    stage = str(tmp_path / "stage")
    commit_batch([make_sample(0)], stage, "b-0")
    stray = make_sample(1)
    with ShardWriter(fs.join(stage, manifest.SHARD_DIR), "uncommitted") as writer:
        writer.write(stray)  # shards of a batch whose manifest part was never written
    assert [s.key for s in iter_samples(stage)] == [make_sample(0).key]
    assert [s.key for s in iter_samples(fs.join(stage, manifest.SHARD_DIR))] == [make_sample(0).key]


def _damaged(tmp_path, name: str, cut) -> tuple[str, list[str]]:
    """A shard of 4 samples cut by ``cut(bytes)``; its URL and the keys of the whole shard."""
    samples = [make_sample(i) for i in range(4)]
    with ShardWriter(str(tmp_path / "whole"), name) as writer:
        for s in samples:
            writer.write(s)
    data = fs.read_bytes(writer.written[0].url)
    url = str(tmp_path / f"{name}.tar")
    with open(url, "wb") as handle:
        handle.write(cut(data))
    return url, [s.key for s in samples]


@pytest.mark.parametrize(
    "name, cut, before, reason",
    [
        ("half", lambda d: d[: len(d) // 2], 1, "unexpected end of data"),
        ("header", lambda d: d[:1543], 0, "unexpected end of data"),
        ("empty", lambda d: b"", 0, "empty file"),
        ("garbage", lambda d: b"x" * 3000, 0, "invalid header"),
    ],
)
def test_a_damaged_shard_gives_its_samples_then_a_clear_error(tmp_path, name, cut, before, reason):
    url, keys = _damaged(tmp_path, name, cut)
    read: list[str] = []
    with pytest.raises(ShardReadError, match=reason) as caught:
        for key, _ in iter_tar_groups(url):
            read.append(key)
    assert read == keys[:before]
    error = caught.value
    assert isinstance(error, tarfile.TarError) and error.url == url and url in str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)  # it crosses process boundaries whole
    import tblib.pickling_support  # as Dask pickles exceptions: with their causes and tracebacks

    tblib.pickling_support.install()
    assert str(pickle.loads(pickle.dumps(error))) == str(error)
    with pytest.raises(ShardReadError, match=reason):
        list(iter_samples([url]))
    with pytest.raises(ShardReadError, match=reason):
        count_samples(url)
    seen: list[Exception] = []  # with a handler, errors are handed over and end the shard
    lenient = [r["__key__"] for r in shard_samples(url, on_error=lambda e: seen.append(e) or True)]
    assert lenient[:before] == keys[:before]
    assert seen and all(isinstance(e, ShardReadError) and e.url == url for e in seen)


def test_a_shard_without_its_end_of_archive_blocks_reads_whole(tmp_path):
    url, keys = _damaged(tmp_path, "noend", lambda d: d[:-1024])
    assert [k for k, _ in iter_tar_groups(url)] == keys and count_samples(url) == 4


def test_a_member_twice_in_one_sample_is_an_error_not_a_silent_overwrite(tmp_path):
    url = str(tmp_path / "twice.tar")
    with tarfile.open(url, "w") as tar:
        for name, data in (("a.json", b"{}"), ("a.src.png", b"1"), ("a.src.png", b"2")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardReadError, match="duplicate file name"):
        list(shard_samples(url))


def test_the_index_locates_every_member_as_the_reader_groups_them(tmp_path):
    samples = [make_sample(i) for i in range(3)]
    with ShardWriter(str(tmp_path), "idx") as writer:
        for s in samples:
            writer.write(s)
    url = writer.written[0].url
    index = shard_index(url, read=lambda ext: ext == "json")
    raw = list(shard_samples(url))
    assert [(m.key, m.ext) for m in index] == [(r["__key__"], e) for r in raw for e in r if e[:2] != "__"]
    with open(url, "rb") as handle:
        for found in index:
            handle.seek(found.offset)
            data = handle.read(found.size)
            assert data == next(r[found.ext] for r in raw if r["__key__"] == found.key)
            assert found.data == (data if found.ext == "json" else None)


@pytest.fixture
def s3_bucket(monkeypatch):
    """A bucket ``ieiw`` on a real S3 API on 127.0.0.1 (moto's server); yields its URL."""
    boto3 = pytest.importorskip("boto3")
    s3fs = pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ieiw")
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses clients: one made for another endpoint must go
    yield "s3://ieiw"
    server.stop()
    s3fs.S3FileSystem.clear_instance_cache()


def test_the_reader_reads_a_stage_on_an_object_store(s3_bucket, tmp_path):
    stage = f"{s3_bucket}/builds/stage"
    samples = [make_sample(i) for i in range(5)]
    commit_batch(samples, stage, "b-0", ShardSpec(max_samples=2))
    shards = manifest.committed_shards(stage)
    assert len(shards) == 3 and all(u.startswith("s3://ieiw/builds/stage/shards/") for u in shards)
    back = list(iter_samples(stage))
    assert [b.key for b in back] == [s.key for s in samples]
    for sample, read in zip(samples, back, strict=True):
        _same_sample(sample, read)
    assert [count_samples(u) for u in shards] == [2, 2, 1]
    # byte for byte what WebDataset reads from a local copy of the same shards
    local = []
    for url in shards:
        local.append(str(tmp_path / url.rsplit("/", 1)[-1]))
        with open(local[-1], "wb") as handle:
            handle.write(fs.read_bytes(url))
    ours = [_without(r, "__url__") for r in iter_shard_samples(shards)]
    theirs = [_without(r, "__url__", "__local_path__") for r in wds.WebDataset(local, shardshuffle=False)]
    assert ours == theirs
    # a truncated shard on the store: its samples so far, then an error that names it
    broken = f"{s3_bucket}/broken/cut.tar"
    fs.write_bytes_atomic(broken, fs.read_bytes(shards[0])[:3000])
    with pytest.raises(ShardReadError, match="unexpected end of data") as caught:
        list(shard_samples(broken))
    assert caught.value.url == broken
