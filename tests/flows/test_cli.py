import re

from cli_text import words
from typer.testing import CliRunner

from ieiw.flows.cli import app
from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
from ieiw.pipelines.removal import RemovalSettings, removal_stage
from ieiw.pipelines.sources.phrasecut import iter_records
from ieiw.storage.commit import commit_batch

runner = CliRunner()


def _stage(phrasecut, tmp_path):
    annotations, images = phrasecut
    results = removal_stage(
        list(iter_records(annotations, images)), build_inpainter(InpaintConfig()), RemovalSettings()
    )
    url = str(tmp_path if tmp_path.name == "removal" else tmp_path / "stage")
    commit_batch(results, url, "removal-test")
    return url


def test_inspect_counts_tasks_and_lists_samples(phrasecut, tmp_path):
    url = _stage(phrasecut, tmp_path)
    result = runner.invoke(app, ["inspect", url, "--n", "3"])
    assert result.exit_code == 0, result.output
    assert "16 samples" in result.output and "add=8" in result.output and "remove=8" in result.output
    assert "template:add=8" in result.output and "dropped by reason: {}" in result.output


def test_inspect_of_a_build_folder_names_its_stages(phrasecut, tmp_path):
    url = _stage(phrasecut, tmp_path / "build" / "removal")
    result = runner.invoke(app, ["inspect", str(tmp_path / "build")])
    assert result.exit_code == 2, result.output
    assert "is a build's folder; name one of its stages" in words(result.output)
    assert f"ieiw inspect {url} (16 samples kept of 16 rows)" in words(result.output)


def test_gallery_writes_a_page_with_every_pair(phrasecut, tmp_path):
    url = _stage(phrasecut, tmp_path)
    page = tmp_path / "page.html"
    result = runner.invoke(app, ["gallery", url + "/shards", "-o", str(page), "--limit", "5"])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert html.count('class="pair"') == 5 and len(re.findall(r'<img alt="source"', html)) == 5


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    for command in ("server", "build", "inspect", "gallery", "demo"):
        assert command in result.output


def _ieiw(*args: str, cwd=None, env_extra: dict | None = None):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "IEIW_DATA"}
    env.update(env_extra or {}, TQDM_DISABLE="1")
    return subprocess.run(
        [sys.executable, "-m", "ieiw.flows.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def _one_line_error(result) -> str:
    """The error the CLI printed: one line on stderr, exit status 2, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_config_errors_are_one_line_naming_the_file_and_the_field(phrasecut, tmp_path):
    import yaml

    annotations, images = phrasecut
    config = tmp_path / "build.yaml"
    removal = {"source": {"annotations": [annotations], "images": images}}

    config.write_text(yaml.safe_dump({"output": "out", "removal": {**removal, "dilaton": 3}}))
    line = _one_line_error(_ieiw("build", str(config), "--plan"))
    assert f"{config}: removal.dilaton: unknown field (did you mean dilation?)" in line

    config.write_text(yaml.safe_dump({"output": "${IEIW_DATA}/out", "removal": removal}))
    line = _one_line_error(_ieiw("build", str(config), "--plan"))
    assert f"{config}: output: uses ${{IEIW_DATA}}, but IEIW_DATA is not set" in line

    missing = {"source": {"annotations": ["refer_missing.json"], "images": images}}
    config.write_text(yaml.safe_dump({"output": "out", "removal": missing}))
    line = _one_line_error(_ieiw("build", str(config), "--plan"))
    assert f"{config}: removal.source.annotations: no file {tmp_path / 'refer_missing.json'}" in line

    config.write_text(yaml.safe_dump({"removal": removal}))  # a build needs somewhere to write
    assert "output: required" in _one_line_error(_ieiw("build", str(config), "--plan"))

    debug = _ieiw("--debug", "build", str(config), "--plan")
    assert debug.returncode != 0 and "Traceback" in debug.stderr  # --debug shows where it came from


def test_relative_paths_are_relative_to_the_config_file(phrasecut, tmp_path):
    import shutil

    import yaml

    from ieiw.flows.config import load_config

    annotations, images = phrasecut
    folder = tmp_path / "configs" / "copy"
    folder.mkdir(parents=True)
    shutil.copy(annotations, folder / "refer.json")
    config = folder / "build.yaml"
    config.write_text(
        yaml.safe_dump(
            {"output": "../out", "removal": {"source": {"annotations": ["refer.json"], "images": images}}}
        )
    )
    loaded = load_config(config)
    assert loaded.output == str(tmp_path / "configs" / "out")
    assert loaded.removal.source.annotations == [str(folder / "refer.json")]
