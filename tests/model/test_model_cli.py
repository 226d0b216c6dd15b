"""`ieiw edit | evaluate | export-hf | train` through the command line, on real files."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
import yaml
from PIL import Image
from synthetic_edits import write_synthetic_stage
from typer.testing import CliRunner

from ieiw.flows.commands.model import register
from ieiw.storage.shards import iter_samples


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return invoke


def test_edit_one_image(cli, trained_model, tmp_path):
    source = tmp_path / "in.jpg"
    Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(source)
    out = tmp_path / "out.png"
    cli("edit", "--model", trained_model, "--image", source, "--instruction", "make the circle red",
        "-o", out,
        "--steps", 2, "--resolution", 32, "--seed", 3, "--device", "cpu")
    with Image.open(out) as image:
        assert image.size == (32, 20)  # long side 32; sides multiples of the UNet's 4


def test_edit_a_folder_skips_broken_files(cli, trained_model, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 50 * i, np.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    result = cli("edit", "--model", trained_model, "--folder", folder,
                 "--instruction", "make the square blue",
                 "-o", tmp_path / "edited", "--steps", 1, "--resolution", 32, "--device", "cpu")
    assert sorted(p.name for p in (tmp_path / "edited").iterdir()) == ["p0.png", "p1.png"]
    assert "undecodable" in result.output


def test_edit_shards_uses_each_samples_instruction(cli, trained_model, edit_shards, tmp_path):
    cli("edit", "--model", trained_model, "--shards", edit_shards, "-o", tmp_path / "edited", "--limit", 3,
        "--steps", 1, "--resolution", 32, "--device", "cpu")
    keys = [s.key for s in iter_samples([str(edit_shards)])][:3]
    assert sorted(p.stem for p in (tmp_path / "edited").iterdir()) == sorted(keys)


def test_evaluate_writes_table_summary_and_grid(cli, trained_model, edit_shards, tiny_clip, tmp_path):
    name, config_file, weights = tiny_clip
    out = tmp_path / "eval"
    result = cli("evaluate", "--model", trained_model, "--shards", edit_shards, "-o", out, "--limit", 5,
                 "--clip-model", name, "--clip-pretrained", weights, "--clip-config-file", config_file,
                 "--steps", 2, "--resolution", 32, "--device", "cpu")
    assert "clip_direction" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 5
    assert summary["direction_from_captions"] == 5  # the synthetic samples have captions
    for metric in ("clip_direction", "clip_image", "clip_text", "clip_target"):
        assert summary[metric]["count"] == 5 and -1.0 <= summary[metric]["mean"] <= 1.0
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 6 and rows[0].startswith("key,task,instruction")
    with Image.open(out / "grid.png") as grid:
        assert grid.size[1] > grid.size[0]  # five rows of three


# The defaults of diffusers' train_instruct_pix2pix.py arguments --original_image_column,
# --edit_prompt_column and --edited_image_column: the export must use them so the printed command runs
# without column flags.
DIFFUSERS_ORIGINAL_IMAGE_COLUMN = "input_image"
DIFFUSERS_EDIT_PROMPT_COLUMN = "edit_prompt"
DIFFUSERS_EDITED_IMAGE_COLUMN = "edited_image"
DIFFUSERS_COLUMNS = [
    DIFFUSERS_ORIGINAL_IMAGE_COLUMN, DIFFUSERS_EDIT_PROMPT_COLUMN, DIFFUSERS_EDITED_IMAGE_COLUMN]


def _check_rows(dataset, edit_shards):
    assert dataset.column_names[:3] == DIFFUSERS_COLUMNS
    assert len(dataset) == 48
    samples = {s.key: s for s in iter_samples([str(edit_shards)])}
    for index in (0, 7, 47):
        row = dataset[index]
        sample = samples[row["key"]]
        assert row[DIFFUSERS_EDIT_PROMPT_COLUMN] == sample.meta.instruction
        source = np.asarray(row[DIFFUSERS_ORIGINAL_IMAGE_COLUMN].convert("RGB"))
        target = np.asarray(row[DIFFUSERS_EDITED_IMAGE_COLUMN].convert("RGB"))
        np.testing.assert_array_equal(source, sample.source)
        np.testing.assert_array_equal(target, sample.target)


def test_export_hf_loads_as_the_diffusers_script_loads_dataset_name(cli, edit_shards, tmp_path):
    out = tmp_path / "hf"
    result = cli("export-hf", edit_shards, "-o", out, "--rows-per-file", 20)
    assert f"--dataset_name {out}" in result.output and "_column" not in result.output
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)]
    dataset = datasets.load_dataset(str(out), split="train")  # what --dataset_name DIR does
    _check_rows(dataset, edit_shards)
    raw = pq.read_table(out / "data" / "train-00000-of-00003.parquet").to_pylist()[0]
    assert raw[DIFFUSERS_ORIGINAL_IMAGE_COLUMN]["path"].endswith(".src.png")


def test_export_hf_imagefolder_loads_as_the_diffusers_script_loads_train_data_dir(cli, edit_shards, tmp_path):
    out = tmp_path / "folder"
    result = cli("export-hf", edit_shards, "-o", out, "--layout", "imagefolder")
    assert f"--train_data_dir {out}" in result.output
    dataset = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")  # --train_data_dir DIR
    _check_rows(dataset, edit_shards)
    assert all(p.suffix == ".png" for p in (out / "images").iterdir())


def test_export_hf_other_column_names_are_printed_as_flags(cli, edit_shards, tmp_path):
    out = tmp_path / "named"
    result = cli("export-hf", edit_shards, "-o", out, "--original-image-column", "original_image")
    assert "--original_image_column original_image" in result.output
    assert datasets.load_dataset(str(out), split="train").column_names[0] == "original_image"


@pytest.mark.parametrize("suffix", ["", "/shards"])
def test_export_hf_edit_and_evaluate_read_only_committed_shards(cli, trained_model, tiny_clip, tmp_path,
                                                                suffix):
    """A shard of a batch whose manifest part was never written is not part of the stage."""
    written = write_synthetic_stage(str(tmp_path / "stage"), count=10, per_batch=4, seed=7, uncommitted=3)
    source = f"{tmp_path / 'stage'}{suffix}"
    out = tmp_path / "hf"
    cli("export-hf", source, "-o", out)
    dataset = datasets.load_dataset(str(out), split="train")
    assert sorted(dataset["key"]) == sorted(written["committed"])
    cli("edit", "--model", trained_model, "--shards", source, "-o", tmp_path / "edited", "--steps", 1,
        "--resolution", 32, "--device", "cpu")
    assert sorted(p.stem for p in (tmp_path / "edited").iterdir()) == sorted(written["committed"])
    name, config_file, weights = tiny_clip
    cli("evaluate", "--model", trained_model, "--shards", source, "-o", tmp_path / "eval",
        "--clip-model", name, "--clip-pretrained", weights, "--clip-config-file", config_file,
        "--steps", 1, "--resolution", 32, "--device", "cpu")
    rows = (tmp_path / "eval" / "metrics.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == sorted(written["committed"])


def test_train_command_without_prefect(cli, tiny_base, edit_shards, tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "base_model": str(tiny_base), "output_dir": "run",  # relative to the config's folder
        "data": {"sets": [{"urls": [str(edit_shards)]}], "resolution": 24, "num_workers": 0},
        "train_batch_size": 2, "max_steps": 2, "mixed_precision": "no", "use_ema": False,
    }))
    result = cli("train", config, "--no-prefect")
    assert "last loss" in result.output
    assert (tmp_path / "run" / "model_index.json").exists()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"data": {"resoluton": 24}}, "data.resoluton: unknown field (did you mean resolution?)"),
        ({"output_dir": "${IEIW_NOT_SET}/run"}, "output_dir: uses ${IEIW_NOT_SET}, but IEIW_NOT_SET is not"),
        ({"data": {"sets": [{"urls": ["no-such-shards"]}]}}, "data.sets[0].urls: no folder"),
    ],
    ids=["typo", "unset variable", "missing shards"],
)
def test_a_bad_train_config_is_one_line_and_exit_2(tiny_base, edit_shards, tmp_path, capsys, change,
                                                    expected):
    from ieiw.flows.cli import main

    data = {"sets": [{"urls": [str(edit_shards)]}]}
    values = {"base_model": str(tiny_base), "output_dir": "run", "data": data}
    for key, value in change.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(values))
    with pytest.raises(SystemExit) as stopped:
        main(["train", str(config), "--no-prefect"])
    error = capsys.readouterr().err
    assert stopped.value.code == 2, error
    assert f"{config}: {expected}" in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_second_train_beside_a_model_keeps_its_identity_and_candidates_resume(tiny_base, edit_shards,
                                                                                tmp_path):
    """A trained model is its weights and configs: what a second `ieiw train` writes beside them (logs,
    checkpoints, loss curves, mix reports) is not the model, so candidates made from it resume."""
    from small_training import small_config

    from ieiw.flows.commands.review import register as register_review
    from ieiw.model.trainer import train
    from ieiw.storage.identity import folder_digest, model_identity
    from ieiw.storage.stage_folder import read_record

    config = small_config(tiny_base, edit_shards, tmp_path / "model", max_steps=2, checkpoint_every=1)
    model = train(config)
    identity, whole = model_identity(model), folder_digest(model)
    assert (model / "checkpoints").is_dir() and (model / "logs").is_dir()
    app = typer.Typer()
    register_review(app)
    runner = CliRunner()
    out = tmp_path / "candidates"
    small = ["--model", model, "--shards", edit_shards, "--out", out, "-n", 2, "--steps", 1,
             "--resolution", 32, "--per-shard", 1, "--device", "cpu"]

    def candidates(limit: int):
        return runner.invoke(app, ["candidates", *[str(a) for a in small], "--limit", str(limit)])

    first = candidates(1)
    assert first.exit_code == 0 and "wrote 1 candidate sets" in first.output, first.output
    logs = sorted(p.relative_to(model) for p in (model / "logs").rglob("*") if p.is_file())

    train(config)  # again: resumes at its last step and writes its logs, reports and model once more
    assert sorted(p.relative_to(model) for p in (model / "logs").rglob("*") if p.is_file()) != logs
    assert folder_digest(model) != whole  # the whole folder changed ...
    assert model_identity(model) == identity  # ... the model did not
    resumed = candidates(2)
    assert resumed.exit_code == 0, resumed.output
    assert "wrote 1 candidate sets" in resumed.output and "1 already there" in resumed.output
    assert read_record(str(out))["fingerprint"]["models"] == {"model": identity}

    (model / "unet" / "config.json").write_text((model / "unet" / "config.json").read_text() + "\n")
    changed = candidates(2)  # a changed component is another model: refused, nothing made
    assert changed.exit_code == 1 and "candidates.model: sha256-tree" in " ".join(changed.output.split())
