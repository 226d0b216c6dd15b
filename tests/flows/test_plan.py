"""``ieiw build CONFIG --plan``: the stages, the models each loads and where, the input counts streamed
from the annotation files, what is committed, and GPU-hours from the throughput table; the paper's
recipe (``configs/ieiw.yaml``) validated against the build config; the estimate in the data card."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from cli_text import words
from phrasecut_fixture import write_phrasecut
from rich.console import Console
from tiny_lama import save_tiny_lama
from typer.testing import CliRunner

from ieiw.flows import cli
from ieiw.flows.build import ieiw_build
from ieiw.flows.cli import app
from ieiw.flows.config import BuildConfig, load_config
from ieiw.flows.plan import make_plan, pick_figure, read_plan, throughput_table
from ieiw.pipelines.removal import RemovalStage
from ieiw.storage.layout import BuildLayout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "replacement"))
from replacement_fixtures import write_openimages, write_sa1b  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# A table of round figures, so the expected hours are simple arithmetic.
TABLE = [
    {"operation": "lama_windows", "unit": "windows/s", "per_second": 2.0, "device": "GPU-X", "tiny": False},
    {"operation": "lama_windows", "unit": "windows/s", "per_second": 900.0, "device": "CPU", "tiny": True},
    {"operation": "sam_images", "unit": "images/s", "per_second": 0.5, "device": "GPU-X", "tiny": False},
    {"operation": "clip_images", "unit": "images/s", "per_second": 4.0, "device": "CPU", "tiny": True},
    {
        "operation": "pbe_pairs",
        "unit": "pairs/s",
        "per_second": 0.25,
        "device": "GPU-X",
        "tiny": False,
        "params": {"steps": 50},
    },
]


def test_the_paper_recipe_is_a_valid_build_config_with_real_model_names():
    variables = {"IEIW_DATA": "/data", "IEIW_MODELS": "/models", "IEIW_OUTPUT": "s3://bucket/ieiw"}
    config = load_config(ROOT / "configs" / "ieiw.yaml", variables=variables, check_inputs=False)
    assert isinstance(config, BuildConfig)
    assert config.removal.source.annotations == ["/data/phrasecut/refer_train.json"]
    inpaint = config.removal.inpaint
    assert inpaint.backend == "lama" and inpaint.strategy == "crop"
    assert inpaint.model.split("#")[0].endswith("/big-lama.pt") and inpaint.model.endswith(
        f"#md5={inpaint.model_md5}"
    )
    replacement = config.replacement
    assert {s.kind for s in replacement.sources} == {"sa1b", "openimages"}
    assert replacement.proposer.sam.model_type == "vit_h"
    assert (replacement.embedder.model, replacement.embedder.pretrained) == ("ViT-L-14", "openai")
    assert replacement.paint.model == "Fantasy-Studio/Paint-by-Example"
    assert replacement.caption.model == "Salesforce/blip-image-captioning-large"
    assert replacement.instructions.backend == "llm" and replacement.instructions.llm.model
    assert config.web_edits.source.subreddits == ["PhotoshopRequest"]
    scoring = config.quality.scoring
    assert scoring.aesthetic_checkpoint.endswith("sac+logos+ava1-l14-linearMSE.pth") and scoring.giqa
    assert config.runner.task_runner == "dask" and config.runner.gpus == "auto"
    with pytest.raises(ValueError, match="IEIW_DATA is not set"):
        load_config(
            ROOT / "configs" / "ieiw.yaml",
            variables={"IEIW_OUTPUT": "/o", "IEIW_MODELS": "/m"},
            check_inputs=False,
        )


def test_the_packaged_throughput_table_names_the_device_of_every_figure():
    table = throughput_table()
    operations = {f["operation"] for f in table}
    assert {"lama_windows", "sam_images", "clip_images", "pbe_pairs", "train_images_256"} <= operations
    for entry in table:
        assert entry["per_second"] > 0 and entry["device"] and "tiny" in entry and entry["measured_with"]
    # a figure of the real architecture wins over a tiny one, whatever their order
    assert pick_figure(TABLE, "lama_windows")["device"] == "GPU-X"
    assert pick_figure(TABLE, "clip_images")["tiny"] and pick_figure(TABLE, "blip_captions") is None


def _build(tmp_path, lama: str, **removal) -> BuildConfig:
    annotations, images = write_phrasecut(str(tmp_path / "phrasecut"), n_images=3, size=96)
    sa1b = write_sa1b(str(tmp_path / "sa1b"), n_images=4, size=128, broken=True)
    oi = write_openimages(str(tmp_path / "oi"), n_images=3, size=128)
    photos = tmp_path / "photos"
    write_sa1b(str(photos), n_images=2, size=128, broken=False)
    for path in photos.glob("*.json"):
        path.unlink()
    (tmp_path / "sam.pth").write_bytes(b"the plan never loads it")
    return BuildConfig.model_validate(
        {
            "name": "planned",
            "output": str(tmp_path / "out"),
            "runner": {"task_runner": "dask", "gpus": ["0", "1"]},
            "removal": {
                "source": {"annotations": [annotations], "images": images},
                "inpaint": {"backend": "lama", "model": lama, "strategy": "crop", "window": 64},
                "batch_size": 2,
                **removal,
            },
            "replacement": {
                "sources": [
                    {"kind": "sa1b", "folders": [sa1b]},
                    {"kind": "openimages", **oi},
                    {"kind": "images", "images": str(photos), "dataset": "photos"},
                ],
                "proposer": {"backend": "sam", "sam": {"checkpoint": str(tmp_path / "sam.pth")}},
                "caption": {"backend": "blip", "model": "Salesforce/blip-image-captioning-large"},
                "paint": {
                    "backend": "paint_by_example",
                    "model": "Fantasy-Studio/Paint-by-Example",
                    "steps": 25,
                },
                "database": {"objects_per_image": 4},
                "regions_per_image": 2,
            },
            "quality": {},
        }
    )


def test_the_plan_counts_inputs_names_models_and_devices_and_estimates_gpu_hours(tmp_path):
    lama = save_tiny_lama(str(tmp_path / "big-lama.pt"))
    config = _build(tmp_path, lama)
    plan = make_plan(config, table=TABLE)
    stages = {s.stage: s for s in plan.stages}
    assert list(stages) == [
        "removal",
        "object_database",
        "replacement",
        "score removal",
        "filter removal",
        "score replacement",
        "filter replacement",
    ]
    tasks = sum(1 for _ in RemovalStage(config.removal, str(tmp_path / "unused")).records())
    assert stages["removal"].inputs == tasks == 6 and stages["removal"].state == "not started"
    # 5 SA-1B annotation files (one truncated: its record is a drop), 3 Open Images, 2 photos
    assert stages["object_database"].inputs == stages["replacement"].inputs == 10
    devices = {(s.stage, m.role): m.device for s in plan.stages for m in s.models}
    pinned = "cuda: one copy in each of 2 GPU workers (GPUs 0, 1)"
    assert devices[("removal", "inpainter")] == pinned and devices[("object_database", "proposer")] == pinned
    assert devices[("replacement", "painter")] == pinned and devices[("filter removal", "policy")] == "cpu"
    assert not any(
        m.role in ("embedder", "proposer") for m in stages["replacement"].models
    )  # the database ran them

    work = {(s.stage, w.operation): w for s in plan.stages for w in s.work}
    assert work[("removal", "lama_windows")].items == 6
    lama = work[("removal", "lama_windows")]
    assert lama.hours == pytest.approx(6 / 2.0 / 3600)  # the GPU figure, not the tiny one
    assert work[("object_database", "sam_images")].items == 2  # only the photos need SAM
    assert work[("object_database", "clip_images")].items == 10 * 4
    pairs = work[("replacement", "pbe_pairs")]
    assert pairs.items == 20 and pairs.hours == pytest.approx(20 * (25 / 50) / 0.25 / 3600)  # 25 of 50 steps
    assert work[("score removal", "clip_images")].items == 12  # a removal and its add pair share images
    captions = work[("replacement", "blip_captions")]
    assert captions.items == 40 and captions.hours is None and captions.figure == "no measured figure"
    assert "placeholder" in work[("object_database", "clip_images")].figure  # a tiny figure, said so
    assert any("placeholders" in note for note in plan.notes)
    # BLIP has no figure: the hours left are unknown, never a number that leaves it out
    assert plan.gpus == 2 and plan.gpu_hours is None
    assert plan.known_gpu_hours == pytest.approx(sum(s.gpu_hours or 0 for s in plan.stages))


def test_the_cli_prints_the_plan_and_does_no_work(tmp_path, monkeypatch):
    lama = save_tiny_lama(str(tmp_path / "big-lama.pt"))
    config = _build(tmp_path, lama)
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # a server that is not there
    # The CLI's console took its width from the terminal at import; print the plan at a fixed width
    # so the model cells are not wrapped into each other, whatever terminal the tests run in.
    monkeypatch.setattr(cli, "console", Console(width=250))
    result = CliRunner().invoke(app, ["build", str(path), "--plan"])
    assert result.exit_code == 0, result.output
    text = words(result.output)
    for expected in (
        "Plan of build `planned`",
        "removal 6 PhraseCut tasks",
        "object_database 10 images",
        "LaMa big-lama.pt (crop 64px windows)",
        "lama_windows",
        "Estimated GPU-hours left",
    ):
        assert expected in text, text
    assert not (tmp_path / "out").exists()  # no stage folder, no plan file: nothing was done


def test_a_build_records_its_plan_and_the_data_card_shows_it_beside_the_cost(prefect_api, tmp_path):
    lama = save_tiny_lama(str(tmp_path / "big-lama.pt"))
    full = _build(tmp_path, lama)
    config = full.model_copy(
        update={
            "replacement": None,
            "quality": None,
            "runner": full.runner.model_copy(update={"task_runner": "threads"}),
        }
    )
    ieiw_build(config)
    recorded = read_plan(config.output)
    assert recorded["stages"][0]["stage"] == "removal" and recorded["stages"][0]["inputs"] == 6
    assert json.loads(open(BuildLayout(config.output).plan).read()) == recorded
    card = (tmp_path / "out" / "DATA_CARD.md").read_text()
    assert "## Estimated GPU cost" in card and "6 lama_windows" in card
    section = card.split("## Estimated GPU cost")[1].split("\n## ")[0]
    assert "| removal |" in section and "measured compute time" in section

    # after the build the plan finds everything committed and complete: nothing left to do, no flow run
    after = {s.stage: s for s in make_plan(config).stages}["removal"]
    assert after.committed == 6 and after.state == "complete: the build will not run it"
    assert after.gpu_hours == 0.0
    assert after.total_gpu_hours > 0
    # a changed setting is named before any work, as the build would refuse it
    changed = config.model_copy(update={"removal": config.removal.model_copy(update={"dilation": 3})})
    state = {s.stage: s for s in make_plan(changed).stages}["removal"].state
    assert state.startswith("made with other settings") and "removal.dilation: 15 -> 3" in state
    assert os.path.exists(tmp_path / "out" / "removal" / "stage.json")
