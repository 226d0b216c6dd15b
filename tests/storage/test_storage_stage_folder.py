"""The commit protocol: fingerprints, refusing or rebuilding a changed stage, what readers see, the lease."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pytest
from test_storage_shards import make_sample

from ieiw.storage import fs, manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import model_identity
from ieiw.storage.lease import (
    LeaseLost,
    LeaseRecord,
    StageBusy,
    StageLease,
    boot_id,
    lease_url,
    pid_namespace,
    read_lease,
)
from ieiw.storage.shards import ShardSpec, ShardWriter, iter_samples
from ieiw.storage.stage_folder import StageChanged, commit_samples, open_stage, read_record

FP = Fingerprint(
    "removal", settings={"dilation": 9, "inpaint": {"backend": "opencv"}}, models={"model": None}
)


def test_fingerprint_digest_is_stable_and_changes_name_each_setting():
    same = Fingerprint(
        "removal", settings={"inpaint": {"backend": "opencv"}, "dilation": 9}, models={"model": None}
    )
    assert (
        same.digest == FP.digest
        and Fingerprint.from_record(json.loads(json.dumps(FP.record()))).digest == FP.digest
    )
    changed = Fingerprint(
        "removal",
        settings={"dilation": 25, "inpaint": {"backend": "opencv"}, "make_add_pairs": False},
        models={"model": "sha256:" + "cd" * 32},
        upstream={"candidates": "x"},
    )
    assert changed.digest != FP.digest
    assert changed.changes(FP) == [
        "removal.dilation: 9 -> 25",
        "removal.make_add_pairs: (unset) -> False",
        "removal.model: none -> sha256 cdcdcdcdcdcd..",
        "removal input candidates: none -> x",
    ]


def _commit(writer, batch: str, indices: list[int]):
    return writer.commit(batch, [make_sample(i) for i in indices], ShardSpec(max_samples=2))


def test_a_stage_records_its_fingerprint_resumes_with_it_and_refuses_another(tmp_path):
    url = str(tmp_path / "removal")
    with open_stage(url, FP) as writer:
        report = _commit(writer, "b0", [0, 1, 2])
        writer.finish({"kept": 3})
    assert report.kept == 3 and read_record(url)["fingerprint"]["digest"] == FP.digest
    assert read_record(url)["runs"][0]["kept"] == 3 and read_record(url)["runs"][0]["wall_seconds"] >= 0
    frame = manifest.read_manifest(url)
    assert set(frame["fingerprint"]) == {FP.digest}

    with open_stage(url, FP) as writer:  # the same fingerprint resumes
        assert writer.committed_batches() == {"b0"} and not writer.rebuilt

    changed = Fingerprint(
        "removal", settings={"dilation": 25, "inpaint": {"backend": "opencv"}}, models={"model": None}
    )
    with pytest.raises(StageChanged) as refused:
        open_stage(url, changed).__enter__()
    assert "removal.dilation: 9 -> 25" in str(refused.value) and "--rebuild removal" in str(refused.value)
    assert manifest.completed_batches(url) == {"b0"}  # nothing was touched
    assert read_lease(url) is None  # and the refused run let go of the lease

    with open_stage(url, changed, rebuild="yes") as writer:
        assert writer.rebuilt and writer.committed_batches() == set()
        _commit(writer, "b1", [5])
        writer.finish()
    assert [s.key for s in iter_samples(url)] == [make_sample(5).key]
    assert read_record(url)["fingerprint"]["digest"] == changed.digest


def test_rebuild_changed_rebuilds_only_a_changed_stage(tmp_path):
    url = str(tmp_path / "stage")
    with open_stage(url, FP) as writer:
        _commit(writer, "b0", [0])
    with open_stage(url, FP, rebuild="changed") as writer:
        assert not writer.rebuilt and writer.committed_batches() == {"b0"}
    other = Fingerprint("removal", settings={"dilation": 3})
    with open_stage(url, other, rebuild="changed") as writer:
        assert writer.rebuilt and writer.committed_batches() == set()


def test_a_folder_without_a_record_is_not_silently_adopted(tmp_path):
    url = str(tmp_path / "old")
    with ShardWriter(fs.join(url, "shards"), "legacy") as shards:
        shards.write(make_sample(0))
    with pytest.raises(StageChanged, match="no fingerprint recorded"):
        open_stage(url, FP).__enter__()


def test_readers_see_only_committed_batches_and_the_holder_cleans_the_rest(tmp_path):
    url = str(tmp_path / "stage")
    with open_stage(url, FP) as writer:
        _commit(writer, "b0", [0, 1])
        # a batch whose shards were written but whose part never was (a run killed in between)
        with ShardWriter(fs.join(url, "shards"), "b9") as orphan:
            orphan.write(make_sample(9))
        with open(os.path.join(url, "manifest", ".b8.parquet.tmp-dead"), "wb") as handle:
            handle.write(b"half a part")
        assert {s.key for s in iter_samples(url)} == {make_sample(0).key, make_sample(1).key}
        assert {s.key for s in iter_samples(os.path.join(url, "shards"))} == {
            make_sample(0).key,
            make_sample(1).key,
        }
        assert [os.path.basename(u) for u in manifest.committed_shards(url)] == ["b0-0000.tar"]
    with open_stage(url, FP) as writer:
        assert writer.cleaned == {"temporaries": 1, "uncommitted_shards": 1}
    assert sorted(os.listdir(os.path.join(url, "shards"))) == ["b0-0000.tar"]


def test_the_consolidated_manifest_plus_newer_parts_is_the_whole_truth(tmp_path):
    url = str(tmp_path / "stage")
    with open_stage(url, FP) as writer:
        _commit(writer, "b0", [0, 1])
        writer.finish()
        _commit(writer, "b1", [2])  # committed after the consolidation
    table = manifest.read_table(url, columns=["key", "batch"])
    assert sorted(table.column("batch").to_pylist()) == ["b0", "b0", "b1"]
    assert len(set(table.column("key").to_pylist())) == 3


def test_a_second_writer_is_refused_with_a_clear_message_or_waits(tmp_path):
    url = str(tmp_path / "stage")
    with open_stage(url, FP):
        with pytest.raises(StageBusy) as busy:
            open_stage(url, FP).__enter__()
        assert f"process {os.getpid()}" in str(busy.value) and "being written by another run" in str(
            busy.value
        )
        started = time.monotonic()
        with pytest.raises(StageBusy):
            open_stage(url, FP, lease_wait=1.0).__enter__()
        assert time.monotonic() - started >= 1.0
    with open_stage(url, FP) as writer:  # released: the next run gets it
        assert read_lease(url).holder == writer.holder


def test_a_killed_holders_lease_is_taken_over_and_an_expired_one_too(tmp_path):
    url = str(tmp_path / "stage")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    fs.makedirs(url)
    record = LeaseRecord(  # a process of this boot and pid namespace that no longer runs
        holder="x",
        host=os.uname().nodename,
        pid=dead.pid,
        expires=time.time() + 600,
        acquired=0,
        boot_id=boot_id(),
        pid_ns=pid_namespace(),
    )
    fs.write_bytes_atomic(lease_url(url), record.to_bytes())
    with open_stage(url, FP) as writer:
        assert read_lease(url).holder == writer.holder
    elsewhere = LeaseRecord(holder="y", host="another-host", pid=1, expires=time.time() - 1, acquired=0)
    fs.write_bytes_atomic(lease_url(url), elsewhere.to_bytes())
    with open_stage(url, FP) as writer:
        assert read_lease(url).holder == writer.holder
    alive = LeaseRecord(holder="z", host="another-host", pid=1, expires=time.time() + 600, acquired=0)
    fs.write_bytes_atomic(lease_url(url), alive.to_bytes())
    with pytest.raises(StageBusy, match="another-host"):
        open_stage(url, FP).__enter__()


def test_a_worker_of_a_run_that_lost_its_lease_cannot_commit(tmp_path):
    url = str(tmp_path / "stage")
    with open_stage(url, FP) as writer:
        holder = writer.holder
        fs.write_bytes_atomic(
            lease_url(url),
            LeaseRecord(holder="thief", host="h", pid=1, expires=time.time() + 60, acquired=0).to_bytes(),
        )
        with pytest.raises(LeaseLost, match="no longer holds the lease"):
            commit_samples(url, "b0", [make_sample(0)], None, writer.digest, holder, "removal")
    assert manifest.completed_batches(url) == set()  # the part was not written
    assert list(iter_samples(url)) == []


def test_commit_files_writes_files_then_a_part_with_the_fingerprint(tmp_path):
    url = str(tmp_path / "scores")
    schema = pa.schema([("key", pa.string()), ("score", pa.float64())])
    with open_stage(url, FP) as writer:
        writer.commit_files(
            "s0", pa.table({"key": ["a"], "score": [1.5]}, schema=schema), {"vectors/s0.npy": b"x"}
        )
        writer.finish(schema=schema)
    assert (tmp_path / "scores" / "vectors" / "s0.npy").read_bytes() == b"x"
    table = manifest.read_table(url, schema=schema)
    assert table.column("fingerprint").to_pylist() == [FP.digest] and table.column("score").to_pylist() == [
        1.5
    ]


def test_model_identity_follows_content_not_path(tmp_path, monkeypatch):
    monkeypatch.setenv("IEIW_CACHE", str(tmp_path / "cache"))
    first = tmp_path / "a" / "big-lama.pt"
    first.parent.mkdir()
    first.write_bytes(b"weights v1")
    moved = tmp_path / "b" / "renamed.pt"
    moved.parent.mkdir()
    moved.write_bytes(b"weights v1")
    assert model_identity(first) == model_identity(moved) and model_identity(first).startswith("sha256:")
    first.write_bytes(b"weights v2!")  # same path, other content
    assert model_identity(first) != model_identity(moved)
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "w.safetensors").write_bytes(b"u")
    copy = tmp_path / "pipe-copy"
    (copy / "unet").mkdir(parents=True)
    (copy / "unet" / "w.safetensors").write_bytes(b"u")
    assert model_identity(folder) == model_identity(copy) and model_identity(folder).startswith(
        "sha256-tree:"
    )
    hub = tmp_path / "hub" / "models--org--tiny" / "refs"
    hub.mkdir(parents=True)
    (hub / "main").write_text("a" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_identity("org/tiny") == f"hf:org/tiny@{'a' * 40}"
    assert model_identity("ViT-L-14") == "ViT-L-14"


def test_exclusive_creation_and_failed_writes_leave_nothing(tmp_path):
    for base in (str(tmp_path), "memory://exclusive-test"):
        url = fs.join(base, "lease.json")
        assert fs.create_exclusive(url, b"one") and not fs.create_exclusive(url, b"two")
        assert fs.read_bytes(url) == b"one"
        target = fs.join(base, "part.parquet")
        with pytest.raises(RuntimeError), fs.atomic_open(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("killed")
        assert not fs.exists(target)
    assert sorted(os.listdir(tmp_path)) == ["lease.json"]


def test_a_lease_renews_while_held(tmp_path):
    url = str(tmp_path / "stage")
    fs.makedirs(url)
    with StageLease(url, "stage", ttl=0.6) as lease:
        first = read_lease(url).expires
        deadline = time.monotonic() + 10
        while read_lease(url).expires == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_lease(url).expires > first and read_lease(url).holder == lease.holder
    assert read_lease(url) is None
