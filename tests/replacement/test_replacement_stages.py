"""The object database and the replacement pairs as stage folders: fingerprints that name what changed,
a refusal before any work, and ``rebuild_database`` rebuilding the database and the pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from replacement_build import run, stages
from replacement_fixtures import write_openimages, write_sa1b

from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.database import ObjectDatabase, write_part
from ieiw.pipelines.replacement.index import (
    IndexConfig,
    build_index,
    cache_folder,
    has_index,
    index_info,
    index_key,
    index_url,
    open_index,
    store_index,
)
from ieiw.pipelines.replacement.stage import ObjectDatabaseStage, ReplacementStage
from ieiw.storage import fs, manifest
from ieiw.storage.config import WorkerEnv
from ieiw.storage.layout import OBJECT_DATABASE
from ieiw.storage.runner import forget_models
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import StageChanged, read_record

ENV = WorkerEnv()  # a CPU worker


def _config(tmp_path, clip_config, sam_config, **changes) -> ReplacementConfig:
    photos = tmp_path / "photos"
    if not photos.exists():
        write_sa1b(str(photos), n_images=3, size=128, broken=False)
        for path in photos.glob("*.json"):
            path.unlink()  # images without masks: SAM proposes their regions
    oi = write_openimages(str(tmp_path / "oi"), n_images=2, size=128)
    raw = {
        "sources": [
            {"kind": "images", "images": str(photos), "dataset": "photos"},
            {"kind": "openimages", **oi},
        ],
        "proposer": {"backend": "sam", "sam": sam_config.model_dump()},
        "selection": {
            "min_predicted_iou": 0.0,
            "min_stability": 0.0,
            "max_area_fraction": 1.0,
            "max_border_fraction": 1.0,
            "min_largest_component": 0.0,
        },
        "embedder": clip_config.model_dump(),
        "labels": {"vocabulary": ["cat", "dog", "cup"]},
        "database": {"batch_size": 2, "index": {"kind": "flat"}},
        "retrieval": {"similarity_ceiling": 2.0, "min_similarity": -2.0},
        "paint": {"backend": "seamless_clone"},
        "batch_size": 2,
    }
    for path, value in changes.items():
        node = raw
        *parents, leaf = path.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return ReplacementConfig.model_validate(raw)


def _fingerprints(config: ReplacementConfig, output) -> tuple:
    """The database's and the pairs' fingerprints (no database built: the pairs' upstream is the digest
    the database would have)."""
    database = f"{output}/object_database"
    pairs = ReplacementStage(config, f"{output}/replacement", database)
    return ObjectDatabaseStage(config, database).fingerprint(ENV), pairs.full_fingerprint(ENV)


def test_replacement_fingerprints_hold_what_shapes_the_output_and_no_path(tmp_path, clip_config, sam_config):
    config = _config(tmp_path, clip_config, sam_config)
    database, pairs = _fingerprints(config, tmp_path / "build")
    assert str(tmp_path) not in json.dumps(database.record()) and str(tmp_path) not in json.dumps(
        pairs.record()
    )
    assert database.models["embedder.pretrained"].startswith("sha256:")
    assert database.models["proposer.sam.checkpoint"].startswith("sha256:")
    assert pairs.upstream == {OBJECT_DATABASE: database.digest}

    # where things are, how big the batches are, which device, how much input: none of it changes a
    # fingerprint
    operational = _config(
        tmp_path,
        clip_config,
        sam_config,
        **{
            "database.url": "s3://bucket/elsewhere",
            "database.batch_size": 7,
            "database.index.gpu": "never",
            "database.index.chunk_rows": 5,
            "batch_size": 5,
            "embedder.device": "cuda",
            "embedder.batch_size": 3,
            "paint.batch_size": 9,
            "proposer.sam.points_per_batch": 3,
            "limit": 2,
        },
    )
    moved = _fingerprints(operational, tmp_path / "elsewhere")
    assert moved[0].digest == database.digest and moved[1].digest == pairs.digest

    # a SAM setting changes both, and is named
    sam = _fingerprints(
        _config(tmp_path, clip_config, sam_config, **{"proposer.sam.points_per_side": 3}), tmp_path / "b"
    )
    assert sam[0].changes(database) == ["object_database.proposer.sam.points_per_side: 4 -> 3"]
    assert "replacement.proposer.sam.points_per_side: 4 -> 3" in sam[1].changes(pairs)
    # a retrieval or index setting changes the pairs, not the database
    for name, value, line in (
        ("database.index.nprobe", 64, "replacement.database.index.nprobe: 16 -> 64"),
        ("database.index.kind", "hnsw", 'replacement.database.index.kind: "flat" -> "hnsw"'),
        ("retrieval.k", 8, "replacement.retrieval.k: 32 -> 8"),
    ):
        changed = _fingerprints(_config(tmp_path, clip_config, sam_config, **{name: value}), tmp_path / "b")
        assert changed[0].digest == database.digest and changed[1].changes(pairs) == [line]
    # the number of objects kept per image changes both
    kept = _fingerprints(
        _config(tmp_path, clip_config, sam_config, **{"database.objects_per_image": 5}), tmp_path / "b"
    )
    assert kept[0].changes(database) == ["object_database.database.objects_per_image: 8 -> 5"]
    # the Open Images annotations by content: an edited CSV changes the database
    csv = tmp_path / "oi" / "segmentation.csv"
    csv.write_text(csv.read_text().replace("0.9,", "0.8,"))
    assert any("segmentation_csv" in c for c in _fingerprints(config, tmp_path / "b")[0].changes(database))


def _summary_keys(url: str) -> list[str]:
    return sorted(s.key for s in iter_samples(f"{url}/replacement"))


def _parts(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "build/object_database/parts").iterdir())


@pytest.mark.usefixtures("prefect_server")
def test_replacement_refuses_a_changed_sam_setting_and_rebuild_database_rebuilds_both(
    tmp_path, clip_config, sam_config
):
    forget_models()
    output = str(tmp_path / "build")
    config = _config(tmp_path, clip_config, sam_config)
    first = run(config, output)
    objects = first[OBJECT_DATABASE].extra["objects"]
    assert first["replacement"].kept > 0 and objects > 0
    # a rerun with nothing changed starts neither stage: both are complete for this input
    again = run(config, output)
    assert again[OBJECT_DATABASE].skipped and again["replacement"].skipped
    assert again["replacement"].kept == 0 and not again["replacement"].rebuilt
    db_url = f"{output}/object_database"
    committed = _parts(tmp_path)
    assert len(ObjectDatabase(db_url)) == objects
    keys = _summary_keys(output)
    database_record = read_record(db_url)
    pairs_record = read_record(f"{output}/replacement")
    assert pairs_record["fingerprint"]["upstream"] == {
        OBJECT_DATABASE: database_record["fingerprint"]["digest"]
    }

    # a changed SAM setting stops before any work, naming it; nothing was changed
    changed = _config(tmp_path, clip_config, sam_config, **{"proposer.sam.points_per_side": 3})
    with pytest.raises(StageChanged) as refused:
        run(changed, output)
    assert refused.value.stage == OBJECT_DATABASE
    assert "object_database.proposer.sam.points_per_side: 4 -> 3" in str(refused.value)
    assert "--rebuild object_database" in str(refused.value)
    assert read_record(db_url) == database_record
    assert read_record(f"{output}/replacement") == pairs_record and _summary_keys(output) == keys
    with pytest.raises(StageChanged, match="points_per_side: 4 -> 3"):
        run(changed, output, database_only=True)

    # a changed pairs setting stops the pairs, naming it, before any work: not even a database that
    # would have to be built first (here a new one elsewhere, which the fingerprints do not depend on)
    other = _config(
        tmp_path, clip_config, sam_config, min_change=2.0, **{"database.url": str(tmp_path / "other-db")}
    )
    with pytest.raises(StageChanged, match=r"replacement\.min_change: 1\.0 -> 2\.0"):
        run(other, output)
    assert not (tmp_path / "other-db").exists()
    assert read_record(db_url)["fingerprint"] == database_record["fingerprint"]

    # another index: the pairs are rebuilt on a new index over the same parts (nothing re-embedded)
    hnsw = _config(tmp_path, clip_config, sam_config, **{"database.index.kind": "hnsw"})
    with pytest.raises(StageChanged, match=r'replacement\.database\.index\.kind: "flat" -> "hnsw"'):
        run(hnsw, output)
    reindexed = run(hnsw, output, rebuild=True)
    assert reindexed[OBJECT_DATABASE].skipped  # complete: its batches are not looked at again
    assert reindexed["replacement"].rebuilt and reindexed["replacement"].kept == first["replacement"].kept
    database = ObjectDatabase(db_url)
    digest = database_record["fingerprint"]["digest"]
    flat_key = index_key(digest, database.signature(), IndexConfig(kind="flat"))
    hnsw_key = index_key(digest, database.signature(), IndexConfig(kind="hnsw"))
    assert first[OBJECT_DATABASE].extra["index_key"] == flat_key
    assert index_info(db_url, hnsw_key)["kind"] == "hnsw"
    assert read_record(db_url)["fingerprint"] == database_record["fingerprint"]
    assert has_index(db_url, flat_key)  # an index of the same parts is kept: switching back costs nothing
    assert _parts(tmp_path) == committed

    # rebuild_database rebuilds the database and, downstream of it, the pairs
    rebuilt = run(config, output, rebuild_database=True)
    assert rebuilt[OBJECT_DATABASE].rebuilt and rebuilt["replacement"].rebuilt
    assert rebuilt["replacement"].kept == first["replacement"].kept
    assert _summary_keys(output) == keys  # same settings, same keys

    # with the changed setting: every sample and every object is made with it, nothing old is left
    forget_models()
    rebuilt = run(changed, output, rebuild_database=True)
    assert rebuilt[OBJECT_DATABASE].rebuilt and rebuilt["replacement"].rebuilt
    samples = list(iter_samples(f"{output}/replacement"))
    assert samples and len(samples) == rebuilt["replacement"].kept
    proposed = [s for s in samples if s.meta.provenance.dataset == "photos"]
    assert proposed
    assert {s.meta.generator.settings["regions"]["sam"]["points_per_side"] for s in proposed} == {3}
    record = read_record(db_url)["fingerprint"]
    assert record["digest"] == stages(changed, output)[0].fingerprint(ENV).digest
    assert read_record(f"{output}/replacement")["fingerprint"]["upstream"] == {
        OBJECT_DATABASE: record["digest"]
    }
    frame = manifest.read_manifest(f"{output}/replacement")
    assert frame["key"].is_unique and set(frame["fingerprint"]) == {rebuilt["replacement"].fingerprint}
    parts = manifest.read_table(db_url, columns=["fingerprint"])
    assert set(parts.column("fingerprint").to_pylist()) == {record["digest"]}


def _synthetic_database(url: str, parts: int = 2, rows: int = 40, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(parts * rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for number in range(parts):
        chunk = vectors[number * rows : (number + 1) * rows]
        write_part(
            url,
            f"objects-{number}",
            chunk,
            [
                {
                    "object_id": f"{number}-{i}",
                    "dataset": "syn",
                    "image_id": f"{number}-{i}",
                    "region_id": "0",
                    "label": "cat" if i % 2 else None,
                    "rle_counts": "",
                }
                for i in range(rows)
            ],
        )
    return vectors


def test_replacement_index_on_an_object_store_goes_through_a_local_cache(tmp_path, monkeypatch):
    """A database on a non-local store (``memory://``): parts read through fsspec, the index built
    locally, uploaded under its key, and loaded from the local cache copy (downloaded when absent)."""
    monkeypatch.setenv("IEIW_CACHE", str(tmp_path / "cache"))
    url = "memory://replacement-index-test/objects"
    vectors = _synthetic_database(url)
    database = ObjectDatabase(url)
    assert len(database) == 80 and database.row(41)["object_id"] == "1-1"
    np.testing.assert_allclose(database.vector(45), vectors[45])
    np.testing.assert_allclose(np.concatenate(list(database.iter_vectors(chunk_rows=30))), vectors)
    config = IndexConfig(kind="flat")
    key = index_key("digest", database.signature(), config)
    assert not has_index(url, key)
    with pytest.raises(FileNotFoundError, match="object_database"):
        open_index(url, key, config)
    store_index(build_index(database, config), url, key)
    assert has_index(url, key)
    cached = open_index(url, key, config)  # the copy made while building
    _, rows = cached.search(vectors[:5], 1)
    assert rows[:, 0].tolist() == [0, 1, 2, 3, 4]

    # another machine (an empty cache) downloads it; then the cache copy alone serves it
    monkeypatch.setenv("IEIW_CACHE", str(tmp_path / "other-cache"))
    downloaded = open_index(url, key, config)
    assert len(downloaded) == 80 and downloaded.labels == ["cat"]
    assert fs.exists(f"{cache_folder(key)}/objects.faiss")
    filesystem, path = fs.get_fs(index_url(url, key))
    filesystem.rm(path, recursive=True)
    assert len(open_index(url, key, config)) == 80

    # a new part makes another key; storing its index removes the stale one
    _synthetic_database(url, parts=3)
    grown = ObjectDatabase(url)
    newer = index_key("digest", grown.signature(), config)
    assert newer != key and len(grown) == 120
    store_index(build_index(grown, config), url, newer)
    listed = [
        p.rstrip("/").rsplit("/", 1)[1] for p in fs.get_fs(f"{url}/index")[0].ls(f"{url}/index", detail=False)
    ]
    assert listed == [newer]
