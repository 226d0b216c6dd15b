import os
from collections import Counter

import pytest
from multitask_fixtures import (
    CROWDPOSE_JOINTS,
    write_captions,
    write_coco_keypoints,
    write_coco_stuff,
    write_crowdpose,
    write_grefcoco,
    write_mpii,
    write_pairs,
    write_polygons,
    write_refcoco,
)

from ieiw.pipelines.multitask.captions import load_captions
from ieiw.pipelines.multitask.enhancement_sources import iter_clean_images, iter_pairs
from ieiw.pipelines.multitask.keypoint_sources import (
    MPII_JOINTS,
    iter_coco_keypoints,
    iter_mpii,
    joint_phrase,
)
from ieiw.pipelines.multitask.records import KeypointRecord, PairRecord, ReferringRecord, SemanticRecord
from ieiw.pipelines.multitask.segmentation_sources import (
    iter_coco_stuff,
    iter_grefcoco,
    iter_phrasecut_referring,
    iter_refcoco,
    read_label_names,
)
from ieiw.storage.schema import Drop


def _split(items):
    items = list(items)
    return [i for i in items if not isinstance(i, Drop)], Counter(
        i.reason for i in items if isinstance(i, Drop)
    )


def test_coco_keypoints_through_pycocotools_with_counted_bad_people(tmp_path):
    path, images = write_coco_keypoints(str(tmp_path))
    records, drops = _split(iter_coco_keypoints(path, images))
    assert len(records) == 3 and all(isinstance(r, KeypointRecord) for r in records)
    assert drops == {"crowd_annotation": 1, "no_visible_keypoints": 1, "keypoint_outside_image": 1}
    first = records[0]
    assert first.joint_names[5] == "left_shoulder" and len(first.joints) == 17
    assert first.joints[15][2] == 0 and first.joints[0][2] == 2  # left ankle hidden, nose visible
    assert first.image_size == (200, 160) and os.path.exists(first.image_path)
    assert first.record_id == "coco:person_keypoints_val2017:101" and first.area == pytest.approx(
        0.6 * 70 * 140
    )


def test_crowdpose_joint_names_come_from_the_file(tmp_path):
    path, images = write_crowdpose(str(tmp_path))
    records, drops = _split(iter_coco_keypoints(path, images, dataset="crowdpose"))
    assert not drops and records[0].joint_names == CROWDPOSE_JOINTS
    assert records[0].provenance.dataset == "crowdpose"


def test_mpii_json_with_its_sixteen_joints(tmp_path):
    path, images = write_mpii(str(tmp_path))
    records, drops = _split(iter_mpii(path, images))
    assert drops == {"bad_annotation": 1} and len(records) == 2
    person = records[0]
    assert person.joint_names == list(MPII_JOINTS) and len(person.joints) == 16
    assert person.joints[0][2] == 0 and person.joints[13][2] == 2  # r_ankle not visible, l_shoulder visible
    assert person.box == pytest.approx((80 - 90, 100 - 90, 180, 180))
    assert joint_phrase("l_shoulder") == "left shoulder" and joint_phrase("head_top") == "head top"


def test_coco_stuff_label_maps_and_names(tmp_path):
    root, labels = write_coco_stuff(str(tmp_path))
    names = read_label_names(labels, offset=1)
    assert names[0] == "person" and names[148] == "sky" and names[118] == "grass" and -1 not in names
    records, drops = _split(iter_coco_stuff(root, "val2017", labels, label_offset=1))
    assert len(records) == 3 and all(isinstance(r, SemanticRecord) for r in records)
    assert drops == {"missing_label_map": 1}


def test_refcoco_refs_pickle_and_instances(tmp_path):
    refs, instances, images = write_refcoco(str(tmp_path))
    records, drops = _split(iter_refcoco(refs, instances, images, split="train"))
    assert drops == {"missing_annotation": 1}  # ann 77 is not in instances.json
    assert [r.ref_id for r in records] == ["0", "1", "3"]
    assert records[0].sentences == ["man on the left", "left guy"] and records[0].category == "person"
    assert records[0].image_size == (160, 120) and not records[0].no_target
    everything, _ = _split(iter_refcoco(refs, instances, images))
    assert len(everything) == 4


def test_grefcoco_multi_object_and_no_target(tmp_path):
    refs, instances, images = write_grefcoco(str(tmp_path))
    records, drops = _split(iter_grefcoco(refs, instances, images, split="train"))
    assert not drops and len(records) == 2 and all(isinstance(r, ReferringRecord) for r in records)
    both, none = records
    assert len(both.segmentations) == 2 and both.category == "dog, person"
    assert none.no_target and none.segmentations == []


def test_phrasecut_polygons_as_referring_records(tmp_path):
    path, images = write_polygons(str(tmp_path))
    records, drops = _split(iter_phrasecut_referring(path, images))
    assert not drops and [r.sentences for r in records] == [["red square"], ["tall post"], ["nothing"]]
    assert records[0].polygons and records[0].record_id == "phrasecut:seg:1__0"


@pytest.mark.parametrize(
    "kind,kinds", [("gopro", "deblur"), ("reds", "deblur"), ("sidd", "denoise"), ("clwd", "watermark")]
)
def test_enhancement_pairs_match_by_name(tmp_path, kind, kinds):
    root = write_pairs(str(tmp_path / kind), kind)
    records, drops = _split(iter_pairs(kind, root))
    assert len(records) == 3 and all(isinstance(r, PairRecord) and r.kind == kinds for r in records)
    assert drops == {"unpaired_file": 1}
    for record in records:
        assert os.path.exists(record.degraded_path) and os.path.exists(record.clean_path)
        assert os.path.basename(record.degraded_path).replace("_NOISY_", "_GT_") == os.path.basename(
            record.clean_path
        )


def test_unknown_layout_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown enhancement dataset layout"):
        iter_pairs("nope", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        list(iter_pairs("gopro", str(tmp_path / "absent")))


def test_clean_images_rotate_through_degradations(tmp_path):
    root = write_pairs(str(tmp_path), "clwd")
    folder = os.path.join(root, "train", "Watermark_free_image")
    records = list(iter_clean_images(folder, ["jpeg", "watermark", "motion_blur"], per_image=2))
    assert len(records) == 6 and len({r.record_id for r in records}) == 6
    for name in {r.image_id for r in records}:
        assert len({r.degradation for r in records if r.image_id == name}) == 2
    assert records[0].provenance.extra == {"synthetic": True}


def test_captions_take_the_lowest_annotation_id(tmp_path):
    captions = load_captions([write_captions(str(tmp_path), [1, 2])])
    assert captions == {"1": "a person standing outside 0", "2": "a person standing outside 1"}
