"""The object database and the replacement pairs as stage folders: fingerprints that name what changed,
a refusal before any work, and ``rebuild_database`` rebuilding the database and the pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from replacement_fixtures import write_openimages, write_sa1b

from ieiw.flows.config import RunnerConfig
from ieiw.flows.models import clear_models
from ieiw.flows.replacement import (
    DATABASE_STAGE,
    database_fingerprint,
    object_database,
    replacement,
    replacement_fingerprint,
)
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
from ieiw.storage import fs, manifest
from ieiw.storage.shards import ShardSpec, iter_samples
from ieiw.storage.stage_folder import StageChanged, read_record


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


def test_replacement_fingerprints_hold_what_shapes_the_output_and_no_path(tmp_path, clip_config, sam_config):
    config = _config(tmp_path, clip_config, sam_config)
    database = database_fingerprint(config)
    record = json.dumps(database.record())
    assert str(tmp_path) not in record and str(tmp_path) not in json.dumps(
        replacement_fingerprint(config, database.digest).record()
    )
    assert database.models["embedder"].startswith("sha256:") and database.models["sam"].startswith("sha256:")
    pairs = replacement_fingerprint(config, database.digest)
    assert pairs.upstream == {DATABASE_STAGE: database.digest}

    # where things are, how big the batches are, which device: none of it changes a fingerprint
    operational = _config(
        tmp_path,
        clip_config,
        sam_config,
        **{
            "database.url": "s3://bucket/elsewhere",
            "database.batch_size": 7,
            "batch_size": 5,
            "embedder.device": "cuda",
            "proposer.sam.points_per_batch": 3,
            "limit": 2,
        },
    )
    assert database_fingerprint(operational).digest == database.digest
    assert replacement_fingerprint(operational, database.digest).digest == pairs.digest

    # a SAM setting changes both, and is named
    sam = _config(tmp_path, clip_config, sam_config, **{"proposer.sam.points_per_side": 3})
    assert database_fingerprint(sam).changes(database) == [
        "object_database.proposer.sam.points_per_side: 4 -> 3"
    ]
    assert "replacement.proposer.sam.points_per_side: 4 -> 3" in replacement_fingerprint(
        sam, database.digest
    ).changes(pairs)
    # a retrieval or index query setting changes the pairs, not the database
    probe = _config(tmp_path, clip_config, sam_config, **{"database.index.nprobe": 64})
    assert database_fingerprint(probe).digest == database.digest
    assert replacement_fingerprint(probe, database.digest).changes(pairs) == [
        "replacement.index.nprobe: 16 -> 64"
    ]
    # the Open Images annotations by content: an edited CSV changes the database
    csv = tmp_path / "oi" / "segmentation.csv"
    csv.write_text(csv.read_text().replace("0.9,", "0.8,"))
    assert any("segmentation_csv" in c for c in database_fingerprint(config).changes(database))


def _summary_keys(url: str) -> list[str]:
    return sorted(s.key for s in iter_samples(f"{url}/replacement"))


@pytest.mark.usefixtures("prefect_server")
def test_replacement_refuses_a_changed_sam_setting_and_rebuild_database_rebuilds_both(
    tmp_path, clip_config, sam_config
):
    clear_models()
    output = str(tmp_path / "build")
    runner = RunnerConfig(max_workers=1, retries=0)
    spec = ShardSpec(max_samples=50)
    config = _config(tmp_path, clip_config, sam_config)
    first = replacement(config, output, spec, runner)
    assert first["kept"] > 0 and first["database"]["objects"] > 0
    # a rerun with nothing changed reuses both
    again = replacement(config, output, spec, runner)
    assert again["kept"] == 0 and again["database"]["reused"] and not again["rebuilt"]
    # what a killed database run leaves (vectors of a part that never committed, a temporary) is
    # removed by the next run that holds the database; committed parts are kept
    db_url = f"{output}/object_database"
    committed = sorted(p.name for p in (tmp_path / "build/object_database/parts").iterdir())
    (tmp_path / "build/object_database/parts/objects-killed.npy").write_bytes(b"partial")
    (tmp_path / "build/object_database/parts/.objects-x.npy.tmp-1234").write_bytes(b"partial")
    finished = object_database(config, output, spec, runner)
    assert finished["batches_resumed"] == 3 and "batches" not in finished
    assert sorted(p.name for p in (tmp_path / "build/object_database/parts").iterdir()) == committed
    assert len(ObjectDatabase(db_url)) == first["database"]["objects"]
    keys = _summary_keys(output)
    database_record = read_record(f"{output}/object_database")
    pairs_record = read_record(f"{output}/replacement")
    assert pairs_record["fingerprint"]["upstream"] == {
        DATABASE_STAGE: database_record["fingerprint"]["digest"]
    }

    # a changed SAM setting stops before any work, naming it; nothing was changed
    changed = _config(tmp_path, clip_config, sam_config, **{"proposer.sam.points_per_side": 3})
    with pytest.raises(StageChanged) as refused:
        replacement(changed, output, spec, runner)
    assert refused.value.stage == DATABASE_STAGE
    assert "object_database.proposer.sam.points_per_side: 4 -> 3" in str(refused.value)
    assert "--rebuild object_database" in str(refused.value)
    assert read_record(f"{output}/object_database") == database_record
    assert read_record(f"{output}/replacement") == pairs_record and _summary_keys(output) == keys
    with pytest.raises(StageChanged, match="points_per_side: 4 -> 3"):
        object_database(changed, output, spec, runner)

    # a changed pairs setting stops the pairs, naming it, before any work: not even a database that
    # would have to be built first (here a new one elsewhere, which the fingerprints do not depend on)
    other = _config(
        tmp_path, clip_config, sam_config, min_change=2.0, **{"database.url": str(tmp_path / "other-db")}
    )
    with pytest.raises(StageChanged, match=r"replacement\.min_change: 1\.0 -> 2\.0"):
        replacement(other, output, spec, runner)
    assert not (tmp_path / "other-db").exists()
    assert read_record(f"{output}/object_database")["fingerprint"] == database_record["fingerprint"]

    # another index: the pairs are rebuilt on a new index over the same parts (nothing re-embedded)
    hnsw = _config(tmp_path, clip_config, sam_config, **{"database.index.kind": "hnsw"})
    with pytest.raises(StageChanged, match=r'replacement\.index\.kind: "flat" -> "hnsw"'):
        replacement(hnsw, output, spec, runner)
    reindexed = replacement(hnsw, output, spec, runner, rebuild="yes")
    assert reindexed["rebuilt"] and reindexed["database"]["reused"] and reindexed["kept"] == first["kept"]
    assert reindexed["database"]["index_key"] != first["database"]["index_key"]
    assert index_info(db_url, reindexed["database"]["index_key"])["kind"] == "hnsw"
    assert read_record(db_url)["fingerprint"] == database_record["fingerprint"]
    assert not has_index(db_url, first["database"]["index_key"])  # the stale index was removed
    assert sorted(p.name for p in (tmp_path / "build/object_database/parts").iterdir()) == committed

    # rebuild_database rebuilds the database and, downstream of it, the pairs
    rebuilt = replacement(config, output, spec, runner, rebuild_database="yes")
    assert rebuilt["database"]["rebuilt"] and rebuilt["rebuilt"]
    assert rebuilt["kept"] == first["kept"] and _summary_keys(output) == keys  # same settings, same keys

    # with the changed setting: every sample and every object is made with it, nothing old is left
    clear_models()
    rebuilt = replacement(changed, output, spec, runner, rebuild_database="yes")
    assert rebuilt["database"]["rebuilt"] and rebuilt["rebuilt"]
    samples = list(iter_samples(f"{output}/replacement"))
    assert samples and len(samples) == rebuilt["kept"]
    proposed = [s for s in samples if s.meta.provenance.dataset == "photos"]
    assert proposed and {s.meta.generator.settings["regions"]["points_per_side"] for s in proposed} == {3}
    record = read_record(f"{output}/object_database")["fingerprint"]
    assert record["digest"] == database_fingerprint(changed).digest
    assert read_record(f"{output}/replacement")["fingerprint"]["upstream"] == {
        DATABASE_STAGE: record["digest"]
    }
    frame = manifest.read_manifest(f"{output}/replacement")
    assert frame["key"].is_unique and set(frame["fingerprint"]) == {rebuilt["fingerprint"]}
    parts = manifest.read_table(f"{output}/object_database", columns=["fingerprint"])
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
