"""The multitask stage through the one runner: the demo build, bad inputs, a folder that grows, and the
same shards on threads and on a two-process Dask cluster."""

import json
import os
import tarfile
from collections import Counter

import numpy as np
import pytest
from multitask_fixtures import COCO_JOINTS, save, textured, write_captions, write_coco_keypoints

from ieiw.flows.config import RunnerConfig
from ieiw.flows.runners import make_task_runner
from ieiw.flows.stage_flow import run_stage_flow
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
from ieiw.pipelines.multitask.stage import MultitaskStage
from ieiw.pipelines.sources.demo import materialize_demo_images
from ieiw.storage import manifest, runner
from ieiw.storage.layout import BuildLayout
from ieiw.storage.runner import StageSummary
from ieiw.storage.schema import Task
from ieiw.storage.shards import iter_samples


def multitask(
    config: MultitaskConfig, output: str, runner_config: RunnerConfig | None = None, task_runner=None
) -> StageSummary:
    """The multitask stage of a build writing to ``output``, run as its own flow run."""
    stage = MultitaskStage(config, BuildLayout(output).generator("multitask"))
    return run_stage_flow(stage, runner_config, task_runner=task_runner)


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
    root = tmp_path_factory.mktemp("demo")
    images = str(root / "images")
    materialize_demo_images(images)
    config = demo_multitask_config(images, resolution=128)
    output = str(root / "build")
    return config, output, multitask(config, output)


def test_demo_flow_writes_every_task_as_shards(demo_build):
    config, output, summary = demo_build
    assert summary.by_task["keypoint"] == 4 and summary.by_task["enhancement"] == 10
    assert summary.by_task["segmentation"] >= 12
    samples = list(iter_samples([os.path.join(output, "multitask", "shards")]))
    assert len(samples) == summary.kept
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
    assert len(frame) == summary.kept + sum(summary.dropped.values()) == summary.records


def test_demo_flow_rerun_resumes_without_duplicates(demo_build):
    config, output, first = demo_build
    again = multitask(config, output)  # complete for these settings and inputs: not even a flow run
    assert again.skipped and again.kept == 0
    assert again.records_committed_before == first.kept + sum(first.dropped.values())
    keys = [s.key for s in iter_samples([os.path.join(output, "multitask", "shards")])]
    assert len(keys) == len(set(keys)) == first.kept


def test_flow_counts_bad_inputs_as_drops(tmp_path, prefect_api):
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
    assert summary.kept == 2 + 2
    assert summary.dropped == {
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


def _photos(folder: str, names: list[str]) -> None:
    for name in names:
        save(textured(96, 80, sum(map(ord, name))), os.path.join(folder, f"{name}.jpg"))


def _shard_files(stage: str) -> dict[str, bytes]:
    folder = os.path.join(stage, "shards")
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def _shard_members(stage: str) -> dict[str, list[tuple[str, bytes]]]:
    """Each committed shard's members in order, with their bytes (the tar headers' times aside)."""
    out = {}
    for url in manifest.committed_shards(stage):
        with tarfile.open(url) as tar:
            out[os.path.basename(url)] = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return out


def test_images_added_to_a_folder_are_new_input_and_nothing_is_redone(tmp_path, prefect_api):
    """A build, then photos added to its source folder (between and after the first ones), then a rerun:
    the new photos' samples are added, nothing committed is redone, and the keys are those of a fresh
    build over the grown folder. A stage that did not record what it listed would find itself complete."""
    photos = str(tmp_path / "photos")
    _photos(photos, ["b", "d", "f", "h", "j"])
    config = MultitaskConfig(
        resolution=64,
        batch_size=3,
        enhancement=EnhancementConfig(
            patch="resize",
            sources=[SyntheticSource(images=photos, degradations=["jpeg", "gaussian_blur"], per_image=2)],
        ),
    )
    output = str(tmp_path / "out")
    stage = os.path.join(output, "multitask")
    first = multitask(config, output)
    assert first.kept == 10 and first.records == 10
    shards_before = _shard_files(stage)

    _photos(photos, ["a", "e", "z"])
    grown = multitask(config, output)
    assert not grown.skipped and grown.records == 6 and grown.kept == 6, grown.outcome()
    assert grown.records_committed_before == 10 and grown.batches_committed_before == first.batches
    after = _shard_files(stage)
    assert {k: after[k] for k in shards_before} == shards_before  # every committed shard as it was
    assert multitask(config, output).skipped  # and now complete again

    fresh = multitask(config, str(tmp_path / "fresh"))
    keys = sorted(manifest.read_manifest(stage)["key"])
    fresh_keys = sorted(manifest.read_manifest(os.path.join(tmp_path, "fresh", "multitask"))["key"])
    assert fresh.kept == 16 and keys == fresh_keys and len(set(keys)) == 16


def test_multitask_on_a_two_process_dask_cluster_matches_threads(tmp_path, prefect_api):
    """The same stage on threads and on two Dask worker processes: the same batches, keys and shard
    contents; the captions table is loaded by the workers (once per process), never by the flow."""
    images = str(tmp_path / "images")
    materialize_demo_images(images)
    config = demo_multitask_config(images, resolution=64)
    config.captions = [write_captions(str(tmp_path / "captions"), [1, 2, 3, 4])]

    runner.forget_models()
    threads = multitask(config, str(tmp_path / "threads"), RunnerConfig(max_workers=2))
    captions_loads = {k: n for k, n in runner.LOADS.items() if k.startswith("captions:")}
    assert list(captions_loads.values()) == [1] and threads.batches > 2  # once for every batch

    runner.forget_models()
    dask = RunnerConfig(task_runner="dask", max_workers=2, gpus="none")
    on_dask = multitask(config, str(tmp_path / "dask"), dask, make_task_runner(dask))
    assert runner.LOADS == {}  # every batch ran in a worker process

    a, b = os.path.join(tmp_path, "threads", "multitask"), os.path.join(tmp_path, "dask", "multitask")
    assert (on_dask.kept, on_dask.dropped) == (threads.kept, threads.dropped)
    assert on_dask.batches == threads.batches
    frame_a, frame_b = manifest.read_manifest(a), manifest.read_manifest(b)
    assert sorted(frame_a["key"]) == sorted(frame_b["key"]) and len(frame_a) == threads.records
    assert set(frame_a["batch"]) == set(frame_b["batch"])
    captions = [s.meta.pretrain_caption for s in iter_samples(manifest.committed_shards(a))]
    assert any(c.startswith("a person standing outside") for c in captions)
    members = _shard_members(a)
    assert members and members == _shard_members(b)
