import json
import os
from collections import Counter

import numpy as np
from multitask_fixtures import (
    save,
    textured,
    write_captions,
    write_coco_keypoints,
    write_coco_stuff,
    write_grefcoco,
    write_mpii,
    write_pairs,
    write_polygons,
    write_refcoco,
)

from ieiw.pipelines.multitask.config import (
    CocoKeypointSource,
    CocoStuffSource,
    EnhancementConfig,
    GRefCocoSource,
    KeypointConfig,
    MpiiSource,
    MultitaskConfig,
    PairSource,
    PhraseCutSegmentationSource,
    RefCocoSource,
    SegmentationConfig,
    SyntheticSource,
)
from ieiw.pipelines.multitask.degradations import DEGRADATIONS, TASK_OF, degrade
from ieiw.pipelines.multitask.stage import iter_multitask_records, multitask_stage
from ieiw.pipelines.multitask.templates import TEMPLATES, keypoint_instruction
from ieiw.quality.task_decoders import decode_keypoint, decode_mask
from ieiw.quality.task_metrics import mask_iou
from ieiw.storage.schema import Drop, Sample, Task
from ieiw.storage.visual_prompts import COLOR_NAMES, keypoint_radius


def _run(config: MultitaskConfig, captions=None):
    items = list(iter_multitask_records(config))
    records = [i for i in items if not isinstance(i, Drop)]
    results = multitask_stage(records, config, captions or {})
    drops = Counter(i.reason for i in [*items, *results] if isinstance(i, Drop))
    return [r for r in results if isinstance(r, Sample)], drops


def test_keypoint_samples_circle_visible_joints_and_record_them(tmp_path):
    path, images = write_coco_keypoints(str(tmp_path))
    captions = {"1": "a person standing outside"}
    config = MultitaskConfig(
        resolution=128,
        keypoints=KeypointConfig(sources=[CocoKeypointSource(annotations=path, images=images)], per_person=3),
    )
    samples, drops = _run(config, captions)
    assert len(samples) == 9 and set(drops) == {
        "crowd_annotation",
        "no_visible_keypoints",
        "keypoint_outside_image",
    }
    assert len({s.key for s in samples}) == 9
    radius = keypoint_radius(128)
    for sample in samples:
        meta = sample.meta
        assert meta.task == Task.KEYPOINT and sample.source.shape == sample.target.shape == (128, 128, 3)
        joints = meta.extra["joints"]
        assert 1 <= len(joints) <= 5 and meta.extra["radius"] == radius == 5.0
        assert len({j["color"] for j in joints}) == len(joints) and {j["color"] for j in joints} <= set(
            COLOR_NAMES
        )
        assert "left_ankle" not in {j["name"] for j in joints}  # hidden in the fixture
        for joint in joints:
            assert joint["phrase"] in meta.instruction and joint["color"] in meta.instruction
            found = decode_keypoint(sample.target, sample.source, joint["color"], radius)
            assert found is not None and np.hypot(found[0] - joint["x"], found[1] - joint["y"]) <= 2.0
        assert meta.instruction_source.startswith("template:keypoint#")
        assert "circle" in meta.pretrain_caption
    first = [s for s in samples if s.meta.provenance.image_id == "1"][0]
    assert first.meta.pretrain_caption.startswith("a person standing outside, ")
    changed = np.abs(first.target.astype(int) - first.source.astype(int)).sum(-1) > 0
    assert 0 < changed.mean() < 0.2


def test_renders_are_deterministic_and_settings_change_keys(tmp_path):
    path, images = write_coco_keypoints(str(tmp_path))
    config = MultitaskConfig(
        resolution=96, keypoints=KeypointConfig(sources=[CocoKeypointSource(annotations=path, images=images)])
    )
    first, _ = _run(config)
    second, _ = _run(config)
    assert [(s.key, s.meta.instruction, s.meta.extra) for s in first] == [
        (s.key, s.meta.instruction, s.meta.extra) for s in second
    ]
    assert all(np.array_equal(a.target, b.target) for a, b in zip(first, second, strict=True))
    other, _ = _run(config.model_copy(update={"resolution": 112}))
    assert not {s.key for s in first} & {s.key for s in other}


def test_mpii_joint_outside_the_image_is_a_counted_drop(tmp_path):
    path, images = write_mpii(str(tmp_path))
    config = MultitaskConfig(
        resolution=96,
        keypoints=KeypointConfig(sources=[MpiiSource(annotations=path, images=images)], max_joints=3),
    )
    samples, drops = _run(config)
    assert len(samples) == 1 and drops == {"keypoint_outside_image": 1, "bad_annotation": 1}
    assert samples[0].meta.provenance.dataset == "mpii"


def test_semantic_overlay_negatives_and_size_mismatch(tmp_path):
    root, labels = write_coco_stuff(str(tmp_path))
    source = CocoStuffSource(root=root, split="val2017", labels=labels, label_offset=1)
    config = MultitaskConfig(resolution=64, segmentation=SegmentationConfig(sources=[source], alpha=0.6))
    samples, drops = _run(config)
    assert drops == {"missing_label_map": 1, "label_size_mismatch": 1} and len(samples) == 2
    for sample in samples:
        extra = sample.meta.extra
        assert sample.mask.shape == (64, 64) and extra["alpha"] == 0.6 and not extra["negative"]
        assert extra["class_name"] in sample.meta.instruction and extra["color"] in sample.meta.instruction
        decoded = decode_mask(sample.target, sample.source, extra["color"], extra["alpha"])
        assert mask_iou(decoded, sample.mask) >= 0.95
        outside = sample.mask == 0
        assert np.array_equal(sample.target[outside], sample.source[outside])
    everything = config.model_copy(
        update={"segmentation": SegmentationConfig(sources=[source], negative_share=1.0)}
    )
    negatives, _ = _run(everything)
    for sample in negatives:
        assert sample.meta.extra["negative"] and np.array_equal(sample.target, sample.source)
        assert (
            not sample.mask.any()
            and sample.meta.extra["class_name"] not in sample.meta.extra["classes_present"]
        )
        assert sample.meta.pretrain_caption.startswith("a photo of ")


def test_referring_masks_from_polygons_rle_and_no_target(tmp_path):
    refs, instances, images = write_refcoco(str(tmp_path / "refcoco"))
    grefs, ginstances, gimages = write_grefcoco(str(tmp_path / "grefcoco"))
    config = MultitaskConfig(
        resolution=80,
        segmentation=SegmentationConfig(
            sources=[
                RefCocoSource(refs=refs, instances=instances, images=images),
                GRefCocoSource(refs=grefs, instances=ginstances, images=gimages),
            ]
        ),
    )
    samples, drops = _run(config)
    assert drops == {"missing_annotation": 1, "empty_mask": 1}  # ann 77 absent; the speck covers no pixel
    by_ref = {s.meta.provenance.region_id: s for s in samples}
    assert set(by_ref) == {"0", "1", "2", "10", "11", "12"}
    assert by_ref["11"].meta.extra["negative"] and np.array_equal(by_ref["11"].target, by_ref["11"].source)
    both = by_ref["10"].mask > 0
    assert both.mean() > (by_ref["0"].mask > 0).mean()  # man and dog together
    for key in ("0", "1", "2", "10"):
        sample = by_ref[key]
        assert sample.meta.extra["phrase"] in sample.meta.instruction
        extra = sample.meta.extra
        assert (
            mask_iou(decode_mask(sample.target, sample.source, extra["color"], extra["alpha"]), sample.mask)
            >= 0.95
        )
    # letterboxed 160x120 -> 80x80: rows 10..69 hold the image
    assert not by_ref["1"].source[:9].any() and by_ref["1"].source[12:68].any()


def test_empty_polygon_is_a_counted_drop(tmp_path):
    path, images = write_polygons(str(tmp_path))
    config = MultitaskConfig(
        resolution=64,
        segmentation=SegmentationConfig(
            sources=[PhraseCutSegmentationSource(annotations=path, images=images)]
        ),
    )
    samples, drops = _run(config)
    assert len(samples) == 2 and drops == {"empty_mask": 1}


def test_enhancement_pairs_and_mismatched_sizes(tmp_path):
    root = write_pairs(str(tmp_path), "gopro")
    config = MultitaskConfig(
        resolution=64, enhancement=EnhancementConfig(sources=[PairSource(kind="gopro", root=root)])
    )
    samples, drops = _run(config)
    assert len(samples) == 2 and drops == {"unpaired_file": 1, "size_mismatch": 1}
    for sample in samples:
        assert sample.source.shape == (64, 64, 3) and not sample.meta.extra["synthetic"]
        assert sample.meta.extra["kind"] == "deblur" and sample.meta.instruction_source.startswith(
            "template:deblur#"
        )
        assert sample.meta.pretrain_caption.endswith("sharp and clear, in high definition")
        x0, y0, side = sample.meta.extra["window"]
        assert side == 64 and 0 <= x0 <= 96 - 64 and 0 <= y0 <= 80 - 64  # a native-resolution patch


def test_synthetic_degradations_are_recorded(tmp_path):
    folder = str(tmp_path / "clean")
    for n in range(2):
        save(textured(120, 90, n), os.path.join(folder, f"{n}.png"))
    config = MultitaskConfig(
        resolution=64, enhancement=EnhancementConfig(sources=[SyntheticSource(images=folder, per_image=6)])
    )
    samples, drops = _run(config)
    assert not drops and len(samples) == 12
    assert {s.meta.extra["degradation"] for s in samples} == set(DEGRADATIONS)
    for sample in samples:
        extra = sample.meta.extra
        assert extra["synthetic"] and sample.meta.generator.backend == "synthetic"
        assert sample.meta.provenance.extra["synthetic"] and extra["kind"] == TASK_OF[extra["degradation"]]
        assert extra["params"] and not np.array_equal(sample.source, sample.target)
        json.dumps(extra)


def test_each_degradation_damages_the_image():
    clean = textured(96, 96, 3)
    for name in DEGRADATIONS:
        degraded, params = degrade(clean, name, np.random.default_rng(0))
        assert degraded.shape == clean.shape and degraded.dtype == np.uint8 and params
        assert np.abs(degraded.astype(int) - clean.astype(int)).mean() > 0.5, name


def test_templates_are_plentiful_and_keypoint_sentences_read(tmp_path):
    for task in ("keypoint", "segmentation", "deblur", "denoise", "dejpeg", "watermark"):
        assert len(TEMPLATES[task]) >= 10 and len(set(TEMPLATES[task])) == len(TEMPLATES[task])
    for template in TEMPLATES["keypoint"]:
        assert "{joint}" in template and "{color}" in template
    text, source = keypoint_instruction(
        "k", [("nose", "red"), ("left eye", "blue"), ("right wrist", "green")]
    )
    assert (
        all(w in text for w in ("nose", "red", "left eye", "blue", "right wrist", "green"))
        and " and " in text
    )
    assert source.startswith("template:keypoint#")


def test_captions_file_feeds_pretrain_captions(tmp_path):
    from ieiw.pipelines.multitask.captions import load_captions

    path, images = write_coco_keypoints(str(tmp_path))
    captions = load_captions([write_captions(str(tmp_path / "captions"), [2])])
    config = MultitaskConfig(
        resolution=96, keypoints=KeypointConfig(sources=[CocoKeypointSource(annotations=path, images=images)])
    )
    samples, _ = _run(config, captions)
    by_image = {s.meta.provenance.image_id: s.meta.pretrain_caption for s in samples}
    assert by_image["2"].startswith("a person standing outside 0, ")
    assert by_image["1"].startswith("a photo of a person, ")
