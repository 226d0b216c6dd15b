"""`ieiw edit | evaluate | export-hf | train` through the command line, on real files."""

from __future__ import annotations

import html
import json

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
import yaml
from cli_text import words
from PIL import Image
from synthetic_edits import write_synthetic_stage
from typer.testing import CliRunner

from ieiw.flows.commands.model import register
from ieiw.storage.shards import expand_shard_urls, iter_samples


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
    assert sorted(p.name for p in (tmp_path / "edited").glob("*.png")) == ["p0.png", "p1.png"]
    assert "undecodable" in result.output
    index = [json.loads(line) for line in (tmp_path / "edited" / "index.jsonl").read_text().splitlines()]
    assert [(r["edit"], r["instruction"], r["source"]) for r in index] == [
        (f"p{i}.png", "make the square blue", str(folder / f"p{i}.png")) for i in range(2)]


def test_edit_shards_uses_each_samples_instruction_and_indexes_them(cli, trained_model, edit_shards,
                                                                     tmp_path):
    out = tmp_path / "edited"
    result = cli("edit", "--model", trained_model, "--shards", edit_shards, "-o", out, "--limit", 3,
                 "--steps", 1, "--resolution", 32, "--seed", 5, "--device", "cpu")
    samples = [(s, url) for url in expand_shard_urls([str(edit_shards)]) for s in iter_samples([url])][:3]
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(s.key for s, _ in samples)
    assert "index.jsonl" in words(result.output) and "index.html" in words(result.output)
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [(r["key"], r["instruction"], r["shard"], r["edit"]) for r in index] == [
        (s.key, s.meta.instruction, url, f"{s.key}.png") for s, url in samples]
    assert index[0]["settings"] == {"steps": 1, "text_guidance": 7.5, "image_guidance": 1.5, "seed": 5,
                                    "resolution": 32, "model": str(trained_model)}
    page = (out / "index.html").read_text()
    for sample, _ in samples:  # source | edit | instruction, each edit linked beside its file
        assert f"src='{sample.key}.png'" in page and html.escape(sample.meta.instruction) in page
    assert page.count("data:image/jpeg;base64,") == 3  # the sources, embedded


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
    assert sorted(p.stem for p in (tmp_path / "edited").glob("*.png")) == sorted(written["committed"])
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


def test_evaluate_help_says_which_clip_it_needs_and_how_to_give_another(cli):
    shown = words(cli("evaluate", "--help").output)
    for text in ("ViT-L-14", "OpenAI", "timm/vit_large_patch14_clip_224.openai", "HF_HUB_OFFLINE",
                 "--clip-model", "--clip-pretrained", "--clip-config-file", "ieiw tiny-model DIR --clip",
                 "clip_text"):
        assert text in shown, text


def test_the_clip_loads_its_weights_with_no_random_init_warning(tiny_clip, caplog):
    """open_clip warns "initialized randomly" only when no checkpoint loaded: here the weights load."""
    import logging

    from safetensors.torch import load_file

    from ieiw.model.evaluate import load_clip

    name, config_file, weights = tiny_clip
    with caplog.at_level(logging.INFO):
        embedder = load_clip(name, weights, config_file, device="cpu")
    assert not [r for r in caplog.records if "randomly" in r.getMessage()], caplog.text
    saved = load_file(weights)
    for key, value in embedder.model.state_dict().items():
        assert np.array_equal(value.cpu().numpy(), saved[key].numpy()), key


def write_uncaptioned_removals(directory, count: int, seed: int) -> None:
    """Synthetic pairs as removal pairs store them: an instruction, no captions of source or target."""
    from synthetic_edits import make_sample

    from ieiw.storage.schema import Sample, Task
    from ieiw.storage.shards import ShardSpec, ShardWriter

    rng = np.random.default_rng(seed)
    with ShardWriter(str(directory), prefix="removal", spec=ShardSpec(max_samples=count)) as writer:
        for i in range(count):
            made = make_sample(rng, i)
            meta = made.meta.model_copy(update={"task": Task.REMOVE, "extra": {}})
            writer.write(Sample(meta=meta, source=made.source, target=made.target, mask=made.mask))


def test_evaluate_says_why_clip_text_is_na(cli, trained_model, tiny_clip, tmp_path):
    seed = 11
    write_uncaptioned_removals(tmp_path / "removals", 3, seed)
    name, config_file, weights = tiny_clip
    out = tmp_path / "eval"
    result = cli("evaluate", "--model", trained_model, "--shards", tmp_path / "removals", "-o", out,
                 "--clip-model", name, "--clip-pretrained", weights, "--clip-config-file", config_file,
                 "--steps", 1, "--resolution", 32, "--device", "cpu")
    summary = json.loads((out / "summary.json").read_text(), parse_constant=_no_nan)
    assert summary["clip_text"] == {"mean": None, "count": 0}, f"seed {seed}"
    note = summary["notes"]["clip_text"]
    assert "n/a for 3 of 3 samples (remove 3)" in note and "caption of the target" in note
    assert "| clip_text | n/a (see below) | 0 |" in (out / "summary.md").read_text()
    assert "clip_text: n/a for 3 of 3 samples" in words(result.output)


def _no_nan(constant: str):
    raise AssertionError(f"{constant} in a JSON report: not JSON")


def test_task_metrics_with_nothing_to_score_are_null_not_nan(cli, trained_model, edit_shards, tmp_path):
    """No keypoint sample among the held-out shards: AP cannot be computed, and says so as null."""
    out = tmp_path / "eval"
    cli("evaluate", "--model", trained_model, "--shards", edit_shards, "--task", "keypoints", "-o", out,
        "--limit", 2, "--steps", 1, "--resolution", 32, "--device", "cpu")
    metrics = json.loads((out / "keypoints_metrics.json").read_text(), parse_constant=_no_nan)
    assert metrics["samples"] == 0 and metrics["AP"] is None


def test_evaluate_task_takes_the_output_folder_as_evaluate_does(edit_shards, tmp_path):
    """`evaluate-task -o/--output` (as `evaluate`), `--edits` for the edited images; a NaN is null."""
    from ieiw.flows.commands.multitask import register as register_multitask

    app = typer.Typer()
    register_multitask(app)
    (tmp_path / "edits").mkdir()
    runner = CliRunner()
    for flag in ("-o", "--output", "--out"):  # --out: the old name, still taken
        out = tmp_path / f"report{flag}"
        result = runner.invoke(app, ["evaluate-task", "--task", "keypoints", "--shards", str(edit_shards),
                                     "--edits", str(tmp_path / "edits"), flag, str(out)])
        assert result.exit_code == 1 and "no keypoints samples" in words(result.output), result.output
        metrics = json.loads((out / "keypoint_metrics.json").read_text(), parse_constant=_no_nan)
        assert metrics["samples"] == 0 and metrics["AP"] is None
    shown = words(runner.invoke(app, ["evaluate-task", "--help"], terminal_width=200).output)
    assert "--output -o" in shown and "--edits" in shown
    assert "--outputs" not in shown and "--out " not in shown  # the old names are hidden
