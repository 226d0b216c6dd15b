"""A replacement build with ``output: s3://...``: the object database, its FAISS index and the pairs on
an S3-compatible store (moto's server on 127.0.0.1), end to end, resumed, and rebuilt on a machine
without the local index copy."""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from test_ops_object_store import _objects, object_store  # noqa: F401  (the moto server fixture)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "replacement"))
from replacement_build import run  # noqa: E402
from replacement_fixtures import write_sa1b  # noqa: E402
from replacement_tiny_models import tiny_clip  # noqa: E402

from ieiw.flows.config import RunnerConfig  # noqa: E402
from ieiw.pipelines.replacement.config import ReplacementConfig  # noqa: E402
from ieiw.storage import manifest  # noqa: E402
from ieiw.storage.layout import OBJECT_DATABASE  # noqa: E402
from ieiw.storage.runner import forget_models  # noqa: E402
from ieiw.storage.shards import ShardSpec, iter_samples  # noqa: E402
from ieiw.storage.stage_folder import read_record  # noqa: E402

OUTPUT = "s3://ieiw/builds/replace"


@pytest.fixture
def config(tmp_path):
    sa1b_dir = write_sa1b(str(tmp_path / "sa1b"), n_images=3, size=128)
    clip = tiny_clip(tmp_path / "clip")
    return ReplacementConfig.model_validate(
        {
            "sources": [{"kind": "sa1b", "folders": [sa1b_dir]}],
            "embedder": clip.model_dump(),
            "labels": {"vocabulary": ["cat", "dog", "cup"]},
            "database": {"batch_size": 2, "index": {"kind": "flat"}},
            "retrieval": {"similarity_ceiling": 0.99999},
            "paint": {"backend": "seamless_clone"},
            "regions_per_image": 2,
            "batch_size": 2,
        }
    )


def test_replacement_builds_end_to_end_on_s3(prefect_api, object_store, config, tmp_path, monkeypatch):  # noqa: F811
    endpoint, _, _ = object_store
    monkeypatch.setenv("IEIW_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # a store URL taken for a local path would show up here as "s3:"
    runner = RunnerConfig(max_workers=1, retries=0)
    spec = ShardSpec(max_samples=4)
    forget_models()
    first = run(config, OUTPUT, spec, runner)
    assert first["replacement"].kept == 6 and first["replacement"].dropped == {"bad_annotation": 1}
    database = first[OBJECT_DATABASE].extra
    assert database["objects"] == 6 and first[OBJECT_DATABASE].dropped == {"bad_annotation": 1}

    keys = _objects(endpoint, "builds/replace/")
    assert not [k for k in keys if ".tmp-" in k] and not os.path.exists(tmp_path / "s3:")
    db = "builds/replace/object_database/"
    assert f"{db}stage.json" in keys and f"{db}manifest.parquet" in keys
    assert len([k for k in keys if k.startswith(f"{db}manifest/")]) == 2  # 4 records in batches of 2
    assert len([k for k in keys if k.startswith(f"{db}parts/") and k.endswith(".npy")]) == 2
    index_key = database["index_key"]
    assert {f"{db}index/{index_key}/{name}" for name in ("objects.faiss", "index.json")} <= set(keys)
    assert os.path.isfile(tmp_path / "cache" / "object-index" / index_key / "objects.faiss")  # the local copy
    assert "builds/replace/replacement/manifest.parquet" in keys
    assert any(k.startswith("builds/replace/replacement/shards/") and k.endswith(".tar") for k in keys)

    samples = list(iter_samples(f"{OUTPUT}/replacement"))
    assert len(samples) == 6 and len({s.key for s in samples}) == 6
    for sample in samples:
        assert sample.meta.provenance.extra["reference"]["image_id"] != sample.meta.provenance.image_id
        assert sample.meta.generator.backend == "seamless_clone"
    pairs = read_record(f"{OUTPUT}/replacement")["fingerprint"]
    assert pairs["upstream"] == {
        "object_database": read_record(f"{OUTPUT}/object_database")["fingerprint"]["digest"]
    }
    assert "s3://" not in str(pairs) and str(tmp_path) not in str(pairs)

    again = run(config, OUTPUT, spec, runner)
    assert again[OBJECT_DATABASE].skipped and again["replacement"].skipped
    assert again["replacement"].records_committed_before == 4

    # another machine: no local copy of the index; it is downloaded from the store, and the rebuilt
    # pairs have the same keys
    shutil.rmtree(tmp_path / "cache" / "object-index")
    forget_models()
    rebuilt = run(config, OUTPUT, spec, runner, rebuild=True)
    assert rebuilt["replacement"].rebuilt and rebuilt["replacement"].kept == 6
    assert rebuilt[OBJECT_DATABASE].skipped  # complete: reused as it is
    assert os.path.isfile(tmp_path / "cache" / "object-index" / index_key / "objects.faiss")
    assert sorted(s.key for s in iter_samples(f"{OUTPUT}/replacement")) == sorted(s.key for s in samples)
    frame = manifest.read_manifest(f"{OUTPUT}/replacement")
    assert len(frame) == 7 and frame["key"].is_unique
    assert not [k for k in _objects(endpoint, "builds/replace/") if ".tmp-" in k]
