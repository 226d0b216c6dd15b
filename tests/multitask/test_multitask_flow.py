import json
import os
from collections import Counter

import numpy as np
import pytest
from multitask_fixtures import COCO_JOINTS, write_coco_keypoints

from ieiw.pipelines.multitask.config import (
    CocoKeypointSource,
    EnhancementConfig,
    KeypointConfig,
    MultitaskConfig,
    SegmentationConfig,
    SyntheticSource,
)
from ieiw.pipelines.multitask.demo import astronaut_keypoints_path, demo_multitask_config
from ieiw.pipelines.multitask.keypoint_sources import iter_coco_keypoints
from ieiw.pipelines.sources.demo import materialize_demo_images
from ieiw.storage import manifest
from ieiw.storage.schema import Task
from ieiw.storage.shards import iter_samples


def test_astronaut_joints_are_coco_keypoints_of_the_photo(tmp_path):
    with open(astronaut_keypoints_path()) as handle:
        doc = json.load(handle)
    assert doc["categories"][0]["keypoints"] == COCO_JOINTS and len(doc["categories"][0]["skeleton"]) == 19
    assert doc["images"] == [{"id": 1, "file_name": "1.jpg", "width": 512, "height": 512, "license": 1}]
    images = str(tmp_path / "images")
    materialize_demo_images(images)
    (person,) = list(iter_coco_keypoints(astronaut_keypoints_path(), images))
    visible = {person.joint_names[i] for i, (_, _, v) in enumerate(person.joints) if v == 2}
    assert {"nose", "left_eye", "right_eye", "left_shoulder", "right_shoulder"} <= visible
    nose, left_eye, right_eye = (person.joints[i] for i in range(3))
    assert right_eye[0] < nose[0] < left_eye[0] and nose[1] > left_eye[1]  # she faces the camera


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory, prefect_api):
    from ieiw.flows.multitask import multitask

    root = tmp_path_factory.mktemp("demo")
    images = str(root / "images")
    materialize_demo_images(images)
    config = demo_multitask_config(images, resolution=128)
    output = str(root / "build")
    return config, output, multitask(config, output)


def test_demo_flow_writes_every_task_as_shards(demo_build):
    config, output, summary = demo_build
    assert summary["by_task"]["keypoint"] == 4 and summary["by_task"]["enhancement"] == 10
    assert summary["by_task"]["segmentation"] >= 12
    samples = list(iter_samples([os.path.join(output, "multitask", "shards")]))
    assert len(samples) == summary["kept"]
    tasks = Counter(s.meta.task for s in samples)
    assert set(tasks) == {Task.KEYPOINT, Task.SEGMENTATION, Task.ENHANCEMENT}
    for sample in samples:
        assert sample.meta.pretrain_caption and sample.meta.instruction
        assert sample.source.shape == sample.target.shape == (128, 128, 3)
        if sample.meta.task == Task.SEGMENTATION:
            assert sample.mask is not None and sample.mask.shape == (128, 128)
        if sample.meta.task == Task.ENHANCEMENT:
            assert sample.meta.extra["synthetic"] and not np.array_equal(sample.source, sample.target)
    frame = manifest.read_manifest(os.path.join(output, "multitask"))
    assert len(frame) == summary["kept"] + sum(summary["dropped"].values())


def test_demo_flow_rerun_resumes_without_duplicates(demo_build):
    from ieiw.flows.multitask import multitask

    config, output, first = demo_build
    again = multitask(config, output)
    assert again["kept"] == 0 and again["resumed_records"] == first["kept"] + sum(first["dropped"].values())
    keys = [s.key for s in iter_samples([os.path.join(output, "multitask", "shards")])]
    assert len(keys) == len(set(keys)) == first["kept"]


def test_flow_counts_bad_inputs_as_drops(tmp_path, prefect_api):
    from ieiw.flows.multitask import multitask

    path, images = write_coco_keypoints(str(tmp_path / "coco"))
    os.remove(os.path.join(images, "000000000002.jpg"))
    config = MultitaskConfig(
        resolution=64,
        batch_size=2,
        keypoints=KeypointConfig(sources=[CocoKeypointSource(annotations=path, images=images)]),
        segmentation=SegmentationConfig(sources=[]),
        enhancement=EnhancementConfig(sources=[SyntheticSource(images=images, degradations=["jpeg"])]),
    )
    summary = multitask(config, str(tmp_path / "out"))
    assert summary["kept"] == 2 + 2
    assert summary["dropped"] == {
        "crowd_annotation": 1,
        "keypoint_outside_image": 1,
        "missing_image": 1,
        "no_visible_keypoints": 1,
    }


def test_multitask_demo_command(tmp_path, prefect_api):
    import typer
    from typer.testing import CliRunner

    from ieiw.flows.commands.multitask import register

    app = typer.Typer()
    register(app)
    output = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["multitask-demo", "--output", str(output), "--images", str(tmp_path / "images")]
    )
    assert result.exit_code == 0, result.output
    assert "keypoint" in result.output and "segmentation" in result.output
    assert list((output / "multitask" / "shards").glob("*.tar"))


def test_every_multitask_sample_carries_its_source_license(tmp_path):
    """A configured license reaches every sample of its source; without one, the dataset's known one."""
    from ieiw.pipelines.multitask.records import LICENSES
    from ieiw.pipelines.multitask.stage import multitask_stage
    from ieiw.pipelines.sources.demo import DEMO_LICENSE

    images = str(tmp_path / "images")
    materialize_demo_images(images)
    config = demo_multitask_config(images, resolution=64)
    from ieiw.pipelines.multitask.stage import iter_multitask_records

    records = list(iter_multitask_records(config))
    samples = multitask_stage(records[:12], config, {})
    assert samples and {s.meta.provenance.license for s in samples} == {DEMO_LICENSE}
    unconfigured = config.model_copy(deep=True)
    unconfigured.keypoints.sources[0].license = None
    unconfigured.keypoints.sources[0].dataset = "coco"
    keypoint = next(r for r in iter_multitask_records(unconfigured) if r.dataset == "coco")
    assert keypoint.provenance.license == LICENSES["coco"]
