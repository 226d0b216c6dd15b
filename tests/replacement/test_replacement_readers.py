"""SA-1B and Open Images V7 readers on fixtures in the real formats; the image-folder reader."""

from __future__ import annotations

import numpy as np
from replacement_fixtures import OPEN_IMAGES_CLASSES, draw_objects, write_openimages, write_sa1b

from ieiw.pipelines.replacement import folder, openimages, sa1b
from ieiw.pipelines.replacement.records import (
    ImageRecord,
    Region,
    RegionDecodeError,
    decode_rle,
    encode_rle,
    read_image,
)
from ieiw.storage.schema import Drop


def test_replacement_sa1b_reader_decodes_rle_and_drops_a_truncated_file(tmp_path):
    root = write_sa1b(str(tmp_path / "sa1b"), n_images=2, size=96)
    items = list(sa1b.iter_records([root]))
    records = [i for i in items if isinstance(i, ImageRecord)]
    drops = [i for i in items if isinstance(i, Drop)]
    assert [r.image_id for r in records] == ["1000", "1001"]
    assert [d.reason for d in drops] == ["bad_annotation"] and "sa_9999.json" in drops[0].detail
    first = records[0]
    assert first.record_id == "sa1b:1000" and first.image_path.endswith("sa_1000.jpg")
    assert len(first.regions) == 6 and first.regions[0].predicted_iou == 0.95
    _, masks = draw_objects(0, 96, 0)
    np.testing.assert_array_equal(first.regions[0].decode(96, 96), masks[0])
    assert read_image(first).shape == (96, 96, 3)


def test_replacement_rle_round_trip_and_uncompressed_counts():
    mask = np.zeros((20, 30), bool)
    mask[3:9, 4:20] = True
    encoded = encode_rle(mask)
    assert isinstance(encoded["counts"], str)
    np.testing.assert_array_equal(decode_rle(encoded).astype(bool), mask)
    column_major = mask.flatten(order="F").astype(np.uint8)
    runs, value, count = [], 0, 0
    for pixel in column_major:
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    runs.append(count)
    np.testing.assert_array_equal(decode_rle({"size": [20, 30], "counts": runs}).astype(bool), mask)
    try:
        decode_rle({"counts": "abc"})
    except RegionDecodeError as error:
        assert "bad RLE" in str(error)
    else:
        raise AssertionError("an RLE without size must fail clearly")


def test_replacement_openimages_reader_names_classes_and_reads_half_size_masks(tmp_path):
    paths = write_openimages(str(tmp_path / "oi"), n_images=2, size=64)
    names = openimages.read_class_names(paths["class_descriptions"])
    assert names == OPEN_IMAGES_CLASSES
    records = list(openimages.iter_records(paths["segmentation_csv"], paths["masks"], paths["images"], names))
    assert len(records) == 2 and all(isinstance(r, ImageRecord) for r in records)
    first = records[0]
    assert first.record_id == f"openimages:{first.image_id}" and len(first.regions) == 2
    assert first.regions[0].label == "cat" and first.regions[0].predicted_iou == 0.9
    mask = first.regions[0].decode(64, 64)
    _, drawn = draw_objects(0, 64, 10)
    overlap = (mask & drawn[0]).sum() / (mask | drawn[0]).sum()
    assert mask.shape == (64, 64) and overlap > 0.8


def test_replacement_openimages_reader_reports_bad_input(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,Other\nabc,1\n")
    items = list(openimages.iter_records(str(bad), str(tmp_path), str(tmp_path)))
    assert len(items) == 1 and items[0].reason == "bad_annotation" and "MaskPath" in items[0].detail
    noniou = tmp_path / "seg.csv"
    noniou.write_text("MaskPath,ImageID,LabelName,PredictedIoU\nm.png,img1,/m/x,high\n")
    items = list(openimages.iter_records(str(noniou), str(tmp_path), str(tmp_path)))
    assert items[0].reason == "bad_annotation" and "PredictedIoU" in items[0].detail
    region = Region(region_id="r", mask_path=str(tmp_path / "absent.png"))
    try:
        region.decode(8, 8)
    except RegionDecodeError as error:
        assert "absent.png" in str(error)
    else:
        raise AssertionError("a missing mask PNG must fail clearly")


def test_replacement_openimages_class_csv_without_header(tmp_path):
    path = tmp_path / "classes.csv"
    path.write_text("/m/011k07,Tortoise\n/m/011q46kg,Container\n")
    assert openimages.read_class_names(str(path)) == {"/m/011k07": "Tortoise", "/m/011q46kg": "Container"}


def test_replacement_folder_reader_and_unreadable_images(tmp_path):
    write_sa1b(str(tmp_path), n_images=1, size=128, broken=False)
    (tmp_path / "zz_broken.jpg").write_bytes(b"not a jpeg")
    records = list(folder.iter_records(str(tmp_path), dataset="mine"))
    assert [r.image_id for r in records] == ["sa_1000", "zz_broken"]
    assert records[0].regions is None and records[0].record_id == "mine:sa_1000"
    drop = read_image(records[1])
    assert isinstance(drop, Drop) and drop.reason == "corrupt_image"
    missing = ImageRecord("x:1", "x", "1", str(tmp_path / "nope.jpg"), regions=[])
    assert read_image(missing).reason == "missing_image"
