"""Input that grows: a larger limit, or images added to a folder, gives the object database and the pairs
a build made from the whole input at once would have (issue 21, bug 1: the database never grew, and
the new records were committed as ``no_semantic_region`` for good)."""

from __future__ import annotations

import shutil

import pytest
from replacement_build import run, stages
from replacement_fixtures import write_sa1b

from ieiw.flows.config import RunnerConfig
from ieiw.flows.stage_flow import run_stage_flow
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.pipelines.replacement.database import ObjectDatabase
from ieiw.pipelines.replacement.index import IndexConfig, open_index
from ieiw.pipelines.replacement.stage import DatabaseNotReady
from ieiw.storage import manifest
from ieiw.storage.layout import OBJECT_DATABASE
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import read_record

pytestmark = pytest.mark.usefixtures("prefect_server")

LENIENT = {  # the classical proposer's regions pass, so proposed regions make objects and pairs
    "min_predicted_iou": 0.0,
    "min_stability": 0.0,
    "max_area_fraction": 1.0,
    "max_border_fraction": 1.0,
    "min_largest_component": 0.0,
}


def _config(sources: list[dict], clip_config, **changes) -> ReplacementConfig:
    return ReplacementConfig.model_validate(
        {
            "sources": sources,
            "proposer": {"backend": "felzenszwalb"},
            "selection": LENIENT,
            "embedder": clip_config.model_dump(),
            "labels": {"vocabulary": ["cat", "dog", "cup"]},
            # batches of another size than the growth step: the grown database's parts are not the
            # fresh one's, its objects are
            "database": {"objects_per_image": 3, "batch_size": 3, "index": {"kind": "flat"}},
            "retrieval": {"similarity_ceiling": 2.0, "min_similarity": -2.0},
            "paint": {"backend": "seamless_clone"},
            "regions_per_image": 2,
            "batch_size": 2,
            **changes,
        }
    )


def database_content(url: str) -> dict:
    """What a database holds, by object id, whatever its parts are: the rows, the vectors' bytes, each
    image's rejected regions, and the index's rows (vector bytes, label, image key)."""
    database = ObjectDatabase(url)
    rows, vectors, rejected = {}, {}, {}
    for number in range(len(database)):
        row = database.row(number)
        object_id = row["object_id"]
        rows[object_id] = {k: v for k, v in row.items() if k not in ("part", "fingerprint")}
        vectors[object_id] = database.vector(number).tobytes()
        rejected[row["image_id"]] = database.regions_dropped(row["dataset"], row["image_id"])
    key = read_record(url)["runs"][-1]["extra"]["index_key"]
    index = open_index(url, key, IndexConfig(kind="flat"))
    assert len(index) == len(database)
    stored = index.index.reconstruct_n(0, len(index))
    indexed = {
        database.row(n)["object_id"]: (
            stored[n].tobytes(),
            index.labels[index.label_ids[n]] if index.label_ids[n] >= 0 else None,
            int(index.image_keys[n]),
        )
        for n in range(len(index))
    }
    return {"rows": rows, "vectors": vectors, "rejected": rejected, "index": indexed}


def pairs(output: str) -> tuple[list[str], list[tuple[str, str | None]]]:
    """The sample keys, and every manifest row's key and drop reason."""
    frame = manifest.read_manifest(f"{output}/replacement")
    rows = sorted(zip(frame["key"], frame["drop_reason"].where(~frame["kept"], None), strict=True))
    return sorted(s.key for s in iter_samples(f"{output}/replacement")), rows


def test_a_raised_limit_grows_the_database_and_remakes_the_pairs_as_a_fresh_build(tmp_path, clip_config):
    sa1b = write_sa1b(str(tmp_path / "sa1b"), n_images=5, size=128, broken=False)
    photos = tmp_path / "photos"
    write_sa1b(str(photos), n_images=2, size=128, seed=3, broken=False)
    for path in photos.glob("*.json"):
        path.unlink()  # images without masks: the proposer makes their regions
    sources = [
        {"kind": "sa1b", "folders": [sa1b]},
        {"kind": "images", "images": str(photos), "dataset": "photos"},
    ]
    grown = str(tmp_path / "grown")
    first = run(_config(sources, clip_config, limit=2), grown)
    assert first[OBJECT_DATABASE].records == 2 and first["replacement"].records == 2
    small = database_content(f"{grown}/object_database")
    assert {row["image_id"] for row in small["rows"].values()} == {"1000", "1001"}
    parts = sorted(p.name for p in (tmp_path / "grown/object_database/parts").iterdir())
    # what a killed run left in the database (the files of a part that never committed, a temporary)
    (tmp_path / "grown/object_database/parts/objects-killed.npy").write_bytes(b"partial")
    (tmp_path / "grown/object_database/parts/.objects-x.npy.tmp-1234").write_bytes(b"partial")

    more = run(_config(sources, clip_config), grown)
    database = more[OBJECT_DATABASE]
    assert not database.skipped and not database.rebuilt  # grown by new batches, nothing redone
    assert database.records_committed_before == 2 and database.records == 5 and database.batches == 2
    after = sorted(p.name for p in (tmp_path / "grown/object_database/parts").iterdir())
    assert set(parts) < set(after) and "objects-killed.npy" not in after
    assert not any(".tmp-" in name for name in after)
    assert more["replacement"].rebuilt  # references come from the whole database: every pair is remade
    assert more["replacement"].records == 7 and more["replacement"].records_committed_before == 0

    fresh = str(tmp_path / "fresh")
    whole = run(_config(sources, clip_config), fresh)
    assert whole[OBJECT_DATABASE].batches == 3  # 7 images in batches of 3: other parts than the grown
    grown_parts = {p for p in after if p.endswith(".npy")}
    fresh_parts = {p.name for p in (tmp_path / "fresh/object_database/parts").glob("*.npy")}
    assert grown_parts != fresh_parts
    assert database_content(f"{grown}/object_database") == database_content(f"{fresh}/object_database")
    keys, rows = pairs(grown)
    assert keys and (keys, rows) == pairs(fresh)
    assert not any(reason == "no_semantic_region" for _, reason in rows)
    # a rerun: both stages are complete for this input, neither starts
    again = run(_config(sources, clip_config), grown)
    assert again[OBJECT_DATABASE].skipped and again["replacement"].skipped


def test_images_added_to_a_folder_grow_the_database_and_remake_the_pairs(tmp_path, clip_config):
    every = tmp_path / "every"
    write_sa1b(str(every), n_images=6, size=128, broken=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    images = sorted(every.glob("*.jpg"))
    for image in images[:3]:
        shutil.copy(image, folder / image.name)
    sources = [{"kind": "images", "images": str(folder), "dataset": "photos"}]
    config = _config(sources, clip_config)
    grown = str(tmp_path / "grown")
    first = run(config, grown)
    assert first[OBJECT_DATABASE].records == 3 and first["replacement"].kept > 0
    assert run(config, grown)["replacement"].skipped  # the same folder: nothing to do

    for image in images[3:]:
        shutil.copy(image, folder / image.name)
    more = run(config, grown)
    database = more[OBJECT_DATABASE]
    assert database.records_committed_before == 3 and database.records == 3 and not database.rebuilt
    assert more["replacement"].rebuilt and more["replacement"].records == 6

    fresh = str(tmp_path / "fresh")
    run(config, fresh)
    assert database_content(f"{grown}/object_database") == database_content(f"{fresh}/object_database")
    keys, rows = pairs(grown)
    assert len(keys) == more["replacement"].kept > 0 and (keys, rows) == pairs(fresh)


def test_the_pairs_refuse_a_database_that_is_not_complete_for_their_input(tmp_path, clip_config):
    every = tmp_path / "every"
    write_sa1b(str(every), n_images=4, size=128, broken=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in sorted(every.glob("*.jpg"))[:2]:
        shutil.copy(image, folder / image.name)
    config = _config([{"kind": "images", "images": str(folder), "dataset": "photos"}], clip_config)
    output = str(tmp_path / "build")
    database, pairs = stages(config, output)
    runner = RunnerConfig(max_workers=1, retries=0)
    with pytest.raises(DatabaseNotReady, match="no object database at"):
        run_stage_flow(pairs, runner)
    assert run_stage_flow(database, runner).records == 2
    for image in sorted(every.glob("*.jpg"))[2:]:  # the input grows; the database has not run since
        shutil.copy(image, folder / image.name)
    with pytest.raises(DatabaseNotReady, match="not complete for this input"):
        run_stage_flow(pairs, runner)
    assert not manifest.completed_batches(f"{output}/replacement")  # refused before any work
    # a database this build must not build: its stage stops instead
    shared = _config(
        [{"kind": "images", "images": str(folder), "dataset": "photos"}],
        clip_config,
        database={**config.database.model_dump(), "build_if_missing": False},
    )
    with pytest.raises(DatabaseNotReady, match="build_if_missing is false"):
        run_stage_flow(stages(shared, output)[0], runner)
    assert run_stage_flow(database, runner).records == 2  # built as asked; then the pairs run
    assert run_stage_flow(pairs, runner).kept > 0
