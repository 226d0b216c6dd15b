"""The photo sources: what img2dataset writes (WebDataset shards and Parquet files, in its documented
layout) read with each photo's provenance into every sample, and a folder's stable ids and input key."""

from __future__ import annotations

import shutil

import pytest
from grounded_helpers import SEED, grounded_config, planted_image
from img2dataset_layout import compute_key, write_parquet, write_webdataset
from PIL import Image

from ieiw.pipelines.grounded.config import PhotoSource
from ieiw.pipelines.grounded.photos import Photo, count_photos, iter_photos
from ieiw.pipelines.grounded.stage import GroundedRemovalStage
from ieiw.storage import manifest
from ieiw.storage.runner import RunOptions, ThreadExecutor, run_stage
from ieiw.storage.schema import Drop
from ieiw.storage.shards import iter_metas


def _rows() -> list[dict]:
    return [
        {
            "url": "https://example.org/red.jpg",
            "caption": "a red square",
            "license": "CC BY 4.0",
            "image": planted_image("red"),
        },
        {"url": "https://example.org/gone.jpg", "caption": "lost", "license": "CC0", "image": None},
        {
            "url": "https://example.org/blue.jpg",
            "caption": "a blue square",
            "license": None,
            "image": planted_image("blue"),
        },
    ]


def _run(stage: GroundedRemovalStage):
    with ThreadExecutor(1) as executor:
        return run_stage(stage, executor, RunOptions())


def test_img2dataset_webdataset_shards_are_read_with_their_provenance(tiny_models, tmp_path):
    folder = write_webdataset(tmp_path / "laion", _rows())
    source = {"kind": "webdataset", "path": str(folder), "dataset": "laion", "license": "see the url"}
    photos = list(iter_photos(PhotoSource.model_validate(source)))
    assert [p.record_id for p in photos] == [f"laion:{compute_key(0, 0)}", f"laion:{compute_key(2, 0)}"]
    red, blue = photos
    assert (
        isinstance(red, Photo) and red.url == "https://example.org/red.jpg" and red.caption == "a red square"
    )
    assert red.license == "CC BY 4.0" and blue.license == "see the url"  # the source's, where none is given
    assert "sha256" in red.extra
    assert count_photos(PhotoSource.model_validate(source)) == 2  # from img2dataset's _stats.json

    stage = GroundedRemovalStage(grounded_config(source, tiny_models), str(tmp_path / "out"))
    assert stage.total() == 2
    summary = _run(stage)
    assert summary.by_task == {"remove": 2, "add": 2}, f"seed {SEED}: {summary.outcome()}"
    by_url = {}
    for meta in iter_metas(str(tmp_path / "out")):
        by_url.setdefault(meta.provenance.url, []).append(meta)
    remove = next(m for m in by_url["https://example.org/red.jpg"] if m.task == "remove")
    assert remove.record_id == f"laion:{compute_key(0, 0)}" and remove.provenance.image_id == compute_key(
        0, 0
    )
    assert remove.provenance.license == "CC BY 4.0" and remove.provenance.extra["caption"] == "a red square"
    assert {m.provenance.license for m in by_url["https://example.org/blue.jpg"]} == {"see the url"}


def test_img2dataset_parquet_output_is_read_and_failed_downloads_are_counted(tiny_models, tmp_path):
    folder = write_parquet(tmp_path / "cc", _rows())
    source = {"kind": "parquet", "path": str(folder), "dataset": "cc"}
    items = list(iter_photos(PhotoSource.model_validate(source)))
    assert [type(i).__name__ for i in items] == ["Photo", "Drop", "Photo"]
    gone = items[1]
    assert isinstance(gone, Drop) and gone.reason == "not_downloaded" and "404" in gone.detail
    assert (
        gone.record_id == f"cc:{compute_key(1, 0)}" and gone.provenance.url == "https://example.org/gone.jpg"
    )
    assert count_photos(PhotoSource.model_validate(source)) == 3

    summary = _run(GroundedRemovalStage(grounded_config(source, tiny_models), str(tmp_path / "out")))
    assert summary.by_task == {"remove": 2, "add": 2} and summary.dropped["not_downloaded"] == 1, (
        f"seed {SEED}: {summary.outcome()}"
    )
    frame = manifest.read_manifest(str(tmp_path / "out"))
    kept = frame[frame["kept"]]
    assert set(kept["url"]) == {"https://example.org/red.jpg", "https://example.org/blue.jpg"}
    assert set(kept["dataset"]) == {"cc"} and set(kept["record_id"]) == {
        f"cc:{compute_key(0, 0)}",
        f"cc:{compute_key(2, 0)}",
    }


def test_a_webdataset_folder_read_as_parquet_says_what_to_set(tmp_path):
    folder = write_webdataset(tmp_path / "laion", _rows())
    with pytest.raises(ValueError, match="source.kind: webdataset"):
        list(iter_photos(PhotoSource(kind="parquet", path=str(folder))))


def test_a_folder_of_photos_has_stable_ids_and_an_input_key_that_grows(tiny_models, tmp_path):
    folder = tmp_path / "photos"
    (folder / "street").mkdir(parents=True)
    Image.fromarray(planted_image("red")).save(folder / "street" / "a.png")
    Image.fromarray(planted_image("blue")).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".hidden.png").write_bytes(b"")
    source = PhotoSource(path=str(folder), dataset="mine")
    assert [p.record_id for p in iter_photos(source)] == ["mine:b.jpg", "mine:street/a.png"]

    stage = GroundedRemovalStage(grounded_config(source.model_dump(), tiny_models), str(tmp_path / "out"))
    key = stage.input_key()
    assert stage.total() == 2
    same = GroundedRemovalStage(grounded_config(source.model_dump(), tiny_models, batch_size=7), "x")
    assert same.input_key() == key  # a batch size is not input
    limited = GroundedRemovalStage(grounded_config(source.model_dump(), tiny_models, limit=1), "x")
    assert limited.input_key() != key and limited.total() == 1 and len(list(limited.records())) == 1
    shutil.copy(folder / "b.jpg", folder / "street" / "c.jpg")
    assert stage.input_key() != key and stage.total() == 3
