import pandas as pd
import pytest
from test_storage_shards import make_sample

from ieiw.storage import manifest
from ieiw.storage.commit import batch_name, commit_batch
from ieiw.storage.schema import Drop, Provenance
from ieiw.storage.shards import ShardSpec, iter_samples


def test_commit_writes_shards_then_a_manifest_part_with_kept_and_dropped(tmp_path):
    url = str(tmp_path / "stage")
    results = [make_sample(i) for i in range(3)]
    results.append(
        Drop(
            key="d1",
            reason="missing_image",
            detail="/x.jpg",
            record_id="r9",
            provenance=Provenance(dataset="test", image_id="9"),
        )
    )
    report = commit_batch(results, url, batch_name("t", ["r0", "r1", "r2", "r9"]), ShardSpec(max_samples=2))
    assert report.kept == 3 and report.dropped == {"missing_image": 1} and len(report.shards) == 2
    frame = manifest.read_manifest(url)
    assert len(frame) == 4 and frame["kept"].sum() == 3
    assert frame.loc[~frame["kept"], "drop_reason"].tolist() == ["missing_image"]
    kept = frame[frame["kept"]]
    assert set(kept["shard"]) == {s.rsplit("/", 1)[-1] for s in report.shards}
    assert manifest.completed_record_ids(url) == {"r0", "r1", "r2", "r9"}
    assert [s.key for s in iter_samples(url + "/shards")] == kept["key"].tolist()
    consolidated = pd.read_parquet(manifest.consolidate(url))
    assert consolidated["key"].tolist() == frame["key"].tolist()


def test_scores_expand_into_columns(tmp_path):
    sample = make_sample(0)
    sample.meta.scores = {"aesthetic_src": 5.5}
    commit_batch([sample], str(tmp_path), "b")
    frame = manifest.read_manifest(str(tmp_path), expand_scores=True)
    assert frame["score_aesthetic_src"].tolist() == [5.5]


def test_a_batch_never_holds_a_key_twice(tmp_path):
    with pytest.raises(ValueError, match="twice"):
        commit_batch([make_sample(0), make_sample(0)], str(tmp_path), "dup")
    assert manifest.completed_record_ids(str(tmp_path)) == set()


def test_batch_names_are_deterministic_and_order_free():
    assert batch_name("s", ["a", "b"]) == batch_name("s", ["b", "a"]) != batch_name("s", ["a", "c"])


def test_empty_stage_reads_as_empty_manifest(tmp_path):
    assert manifest.read_manifest(str(tmp_path / "nothing")).empty
    assert manifest.completed_record_ids(str(tmp_path / "nothing")) == set()
