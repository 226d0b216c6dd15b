import json

import numpy as np

from ieiw.pipelines.sources.phrasecut import (
    PhraseCutRecord,
    RegionSettings,
    iter_records,
    load_region,
    rasterize,
)
from ieiw.storage.schema import Drop


def test_reader_streams_real_format_records(phrasecut):
    annotations, images = phrasecut
    records = list(iter_records(annotations, images))
    assert len(records) == 8 and all(isinstance(r, PhraseCutRecord) for r in records)
    first = records[0]
    assert first.record_id == "phrasecut:1__0" and first.image_id == "1" and first.phrase == "blue disc"
    assert first.image_path.endswith("/1.jpg") and first.provenance.region_id == "1__0"


def test_polygons_rasterise_and_dilate(phrasecut):
    annotations, images = phrasecut
    record = next(iter_records(annotations, images))
    tight = load_region(record, RegionSettings(dilation=0, min_area_fraction=0.0))
    wide = load_region(record, RegionSettings(dilation=5, min_area_fraction=0.0))
    assert tight.mask.shape == tight.image.shape[:2]
    assert set(np.unique(tight.mask)) == {0, 255}
    assert np.count_nonzero(wide.mask) > np.count_nonzero(tight.mask)
    assert np.all(wide.mask[tight.mask > 0] == 255)


def test_truncated_annotation_file_keeps_what_was_read_and_says_why(phrasecut, tmp_path):
    annotations, images = phrasecut
    text = open(annotations).read()
    cut = tmp_path / "refer_cut.json"
    cut.write_text(text[: int(len(text) * 0.6)])
    items = list(iter_records(str(cut), images))
    assert isinstance(items[-1], Drop) and items[-1].reason == "annotation_file_truncated"
    assert "truncated" in items[-1].detail and all(isinstance(i, PhraseCutRecord) for i in items[:-1])
    assert len(items) > 1


def test_tasks_without_required_fields_are_counted_drops(tmp_path):
    path = tmp_path / "refer_bad.json"
    path.write_text(json.dumps([{"task_id": "1__0", "image_id": 1}, 7]))
    items = list(iter_records(str(path), str(tmp_path)))
    assert [i.reason for i in items] == ["bad_annotation", "bad_annotation"]
    assert "Polygons" in items[0].detail and "phrase" in items[0].detail


def _record(tmp_path, polygons, image_id="1", phrase="thing"):
    return PhraseCutRecord(
        record_id=f"phrasecut:{image_id}__0",
        task_id=f"{image_id}__0",
        image_id=image_id,
        phrase=phrase,
        polygons=polygons,
        boxes=[],
        image_path=str(tmp_path / f"{image_id}.jpg"),
    )


def test_bad_regions_and_images_are_dropped_with_reasons(phrasecut, tmp_path):
    _, images = phrasecut
    import shutil

    shutil.copy(f"{images}/1.jpg", tmp_path / "1.jpg")
    (tmp_path / "2.jpg").write_bytes(open(f"{images}/2.jpg", "rb").read()[:300])  # corrupt JPEG
    settings = RegionSettings(min_area_fraction=0.01, max_area_fraction=0.5)
    cases = {
        "empty_mask": _record(tmp_path, [[[]]]),
        "region_too_small": _record(tmp_path, [[[[1, 1], [3, 1], [3, 3]]]]),
        "region_too_large": _record(tmp_path, [[[[0, 0], [127, 0], [127, 127], [0, 127]]]]),
        "missing_image": _record(tmp_path, [[[[1, 1], [50, 1], [50, 50]]]], image_id="404"),
        "corrupt_image": _record(tmp_path, [[[[1, 1], [50, 1], [50, 50]]]], image_id="2"),
        "empty_phrase": _record(tmp_path, [[[[1, 1], [50, 1], [50, 50]]]], phrase=""),
    }
    for reason, record in cases.items():
        result = load_region(record, settings)
        assert isinstance(result, Drop) and result.reason == reason, (reason, result)
        assert result.record_id == record.record_id and result.detail


def test_rasterize_unions_instances():
    square = [[0, 0], [9, 0], [9, 9], [0, 9]]
    other = [[20, 20], [29, 20], [29, 29], [20, 29]]
    mask = rasterize([[square], [other]], 40, 40)
    assert mask[5, 5] == 255 and mask[25, 25] == 255 and mask[15, 15] == 0


def test_urls_sizes_and_annotation_ids_come_from_the_release(phrasecut, tmp_path):
    """With image_data_split.json each image's URL (VG_100K or VG_100K_2) and size come from it; an image
    of another size than the release says is dropped, not silently mis-masked."""
    import json
    import os

    from PIL import Image

    from ieiw.pipelines.sources.phrasecut import load_image_data

    annotations, images = phrasecut
    image_data = load_image_data(os.path.join(os.path.dirname(annotations), "image_data_split.json"))
    records = list(iter_records(annotations, images, image_data=image_data))
    urls = {r.image_id: r.provenance.url for r in records}
    assert urls["1"].endswith("/VG_100K_2/1.jpg") and urls["2"].endswith("/VG_100K/2.jpg")
    assert records[0].provenance.extra == {"ann_ids": [1000], "image_size": [128, 128]}
    assert all(r.provenance.url is None for r in iter_records(annotations, images))  # no guessing
    with Image.open(os.path.join(images, "1.jpg")) as picture:
        picture.resize((100, 90)).save(os.path.join(images, "1.jpg"))
    loaded = load_region(records[0], RegionSettings())
    assert isinstance(loaded, Drop) and loaded.reason == "image_size_mismatch" and "100x90" in loaded.detail
    vg_style = tmp_path / "image_data.json"
    vg_style.write_text(json.dumps([{"id": 7, "url": "https://x/VG_100K/7.jpg", "width": 10, "height": 20}]))
    assert load_image_data(str(vg_style))["7"].height == 20
