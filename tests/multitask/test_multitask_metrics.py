import json
import os

import numpy as np
import pytest
import typer
from multitask_fixtures import save, textured, write_coco_keypoints, write_coco_stuff, write_grefcoco
from PIL import Image
from typer.testing import CliRunner

from ieiw.flows.commands.multitask import register
from ieiw.pipelines.multitask.config import (
    CocoKeypointSource,
    CocoStuffSource,
    EnhancementConfig,
    GRefCocoSource,
    KeypointConfig,
    MultitaskConfig,
    SegmentationConfig,
    SyntheticSource,
)
from ieiw.pipelines.multitask.render import draw_circles
from ieiw.pipelines.multitask.stage import iter_multitask_records, multitask_stage
from ieiw.quality.task_evaluation import OutputFolder, evaluate_task_outputs
from ieiw.quality.task_metrics import keypoint_ap
from ieiw.storage.commit import commit_batch
from ieiw.storage.images import encode_image
from ieiw.storage.schema import Drop, Sample
from ieiw.storage.visual_prompts import COLORS


def _samples(config: MultitaskConfig) -> list[Sample]:
    records = [r for r in iter_multitask_records(config) if not isinstance(r, Drop)]
    return [r for r in multitask_stage(records, config) if isinstance(r, Sample)]


@pytest.fixture
def keypoint_samples(tmp_path):
    path, images = write_coco_keypoints(str(tmp_path / "coco"))
    config = MultitaskConfig(
        resolution=128,
        keypoints=KeypointConfig(
            sources=[CocoKeypointSource(annotations=path, images=images)], per_person=4, min_joints=2
        ),
    )
    return _samples(config)


def _shifted(sample: Sample, dx: float, dy: float) -> np.ndarray:
    joints = sample.meta.extra["joints"]
    return draw_circles(
        sample.source,
        [(j["x"] + dx, j["y"] + dy) for j in joints],
        [j["color"] for j in joints],
        sample.meta.extra["radius"],
    )


def test_cocoeval_ap_is_one_on_perfect_decodes_and_clearly_less_when_shifted(keypoint_samples, tmp_path):
    assert len(keypoint_samples) == 12
    perfect = {s.key: s.target for s in keypoint_samples}
    metrics, rows, grid = evaluate_task_outputs(
        "keypoints", keypoint_samples, perfect, str(tmp_path / "eval")
    )
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["found_rate"] == 1.0 and metrics["hit_rate"] == 1.0 and metrics["mean_error_px"] < 0.5
    assert {"task": "keypoint", "metric": "AP", "value": metrics["AP"]} in rows
    assert grid and Image.open(grid).size[0] == 3 * 192
    assert os.path.exists(tmp_path / "eval" / "keypoint_per_sample.csv")

    shifted = {s.key: _shifted(s, 6.0, 0.0) for s in keypoint_samples}
    worse, _, _ = evaluate_task_outputs("keypoints", keypoint_samples, shifted, str(tmp_path / "shifted"))
    assert worse["found_rate"] == 1.0 and 5.5 < worse["mean_error_px"] < 6.5
    assert worse["AP"] < 0.7

    far = {s.key: _shifted(s, 15.0, 10.0) for s in keypoint_samples}
    worst, _, _ = evaluate_task_outputs("keypoints", keypoint_samples, far, str(tmp_path / "far"))
    assert worst["AP"] < worse["AP"]

    blank = {s.key: s.source for s in keypoint_samples}
    nothing, _, _ = evaluate_task_outputs("keypoints", keypoint_samples, blank, str(tmp_path / "blank"))
    assert nothing["found_rate"] == 0.0 and nothing["AP"] == pytest.approx(0.0)


def test_keypoint_ap_uses_only_the_asked_joints():
    extras = [
        {
            "joints": [{"name": "nose", "x": 40.0, "y": 30.0}, {"name": "left_knee", "x": 60.0, "y": 90.0}],
            "area": 4000.0,
        },
        {"joints": [{"name": "head_top", "x": 20.0, "y": 20.0}], "area": 3000.0},
    ]
    exact = [[(40.0, 30.0), (60.0, 90.0)], [(20.0, 20.0)]]
    assert keypoint_ap(extras, exact)["AP"] == pytest.approx(1.0)
    half = [[(40.0, 30.0), None], [(20.0, 20.0)]]
    assert keypoint_ap(extras, half)["AP"] < 1.0


def test_segmentation_metrics_semantic_referring_and_negatives(tmp_path):
    root, labels = write_coco_stuff(str(tmp_path / "stuff"))
    grefs, instances, images = write_grefcoco(str(tmp_path / "gref"))
    config = MultitaskConfig(
        resolution=64,
        segmentation=SegmentationConfig(
            sources=[
                CocoStuffSource(root=root, split="val2017", labels=labels, label_offset=1),
                GRefCocoSource(refs=grefs, instances=instances, images=images),
            ],
            negative_share=0.0,
        ),
    )
    samples = _samples(config)
    kinds = {(s.meta.extra["kind"], s.meta.extra["negative"]) for s in samples}
    assert kinds == {("semantic", False), ("referring", False), ("referring", True)}
    perfect, _, grid = evaluate_task_outputs(
        "segmentation", samples, {s.key: s.target for s in samples}, str(tmp_path / "eval")
    )
    assert perfect["mIoU"] >= 0.95 and perfect["cIoU"] >= 0.95 and perfect["negative_accuracy"] == 1.0
    assert grid is not None
    untouched, _, _ = evaluate_task_outputs(
        "segmentation", samples, {s.key: s.source for s in samples}, str(tmp_path / "none")
    )
    assert untouched["mIoU"] == 0.0 and untouched["cIoU"] == 0.0 and untouched["negative_accuracy"] == 1.0
    painted = {s.key: np.full_like(s.source, COLORS[s.meta.extra["color"]]) for s in samples}
    everywhere, _, _ = evaluate_task_outputs("segmentation", samples, painted, str(tmp_path / "all"))
    assert everywhere["negative_accuracy"] == 0.0 and everywhere["cIoU"] < 0.5 and everywhere["mIoU"] < 0.5


def test_enhancement_psnr_ssim_against_the_input(tmp_path):
    folder = str(tmp_path / "clean")
    for n in range(3):
        save(textured(100, 100, n), os.path.join(folder, f"{n}.png"))
    config = MultitaskConfig(
        resolution=64,
        enhancement=EnhancementConfig(
            sources=[
                SyntheticSource(images=folder, degradations=["gaussian_noise", "gaussian_blur"], per_image=2)
            ]
        ),
    )
    samples = _samples(config)
    perfect, _, _ = evaluate_task_outputs(
        "enhancement", samples, {s.key: s.target for s in samples}, str(tmp_path)
    )
    assert perfect["SSIM"] == pytest.approx(1.0) and perfect["PSNR"] == 100.0 and perfect["samples"] == 6
    identity, _, _ = evaluate_task_outputs(
        "enhancement", samples, {s.key: s.source for s in samples}, str(tmp_path)
    )
    assert identity["PSNR"] == pytest.approx(identity["input_PSNR"]) and identity["SSIM"] < 1.0
    assert "denoise_PSNR" in identity and "deblur_PSNR" in identity
    # a model working at another resolution is compared at the sample's size
    upscaled = {s.key: np.asarray(Image.fromarray(s.target).resize((128, 128))) for s in samples}
    resized, _, _ = evaluate_task_outputs("enhancement", samples, upscaled, str(tmp_path))
    assert resized["PSNR"] > identity["PSNR"]


def test_missing_outputs_are_counted(keypoint_samples, tmp_path):
    outputs = {s.key: s.target for s in keypoint_samples[:6]}
    metrics, _, _ = evaluate_task_outputs("keypoints", keypoint_samples, outputs, str(tmp_path))
    assert metrics["missing_outputs"] == 6 and metrics["samples"] == 12 and metrics["AP"] < 0.7
    with pytest.raises(ValueError):
        evaluate_task_outputs("depth", keypoint_samples, outputs, str(tmp_path))


def test_evaluate_task_command_on_shards_and_an_outputs_folder(keypoint_samples, tmp_path):
    stage = str(tmp_path / "build" / "multitask")
    commit_batch(keypoint_samples, stage, "multitask-test")
    outputs = tmp_path / "edits"
    outputs.mkdir()
    for sample in keypoint_samples:
        (outputs / f"{sample.key}.png").write_bytes(encode_image(sample.target))
    assert len(OutputFolder(str(outputs))) == 12
    app = typer.Typer()
    register(app)
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        [
            "evaluate-task",
            "--task",
            "keypoints",
            "--shards",
            stage,
            "--outputs",
            str(outputs),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "AP" in result.output and "1.0000" in result.output
    metrics = json.loads((out / "keypoint_metrics.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["samples"] == 12
    assert (out / "keypoint_grid.png").exists()
    wrong = CliRunner().invoke(
        app, ["evaluate-task", "--task", "depth", "--shards", stage, "--outputs", str(outputs)]
    )
    assert wrong.exit_code != 0 and "--task" in wrong.output
