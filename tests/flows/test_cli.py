import re

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
    url = str(tmp_path / "stage")
    commit_batch(results, url, "removal-test")
    return url


def test_inspect_counts_tasks_and_lists_samples(phrasecut, tmp_path):
    url = _stage(phrasecut, tmp_path)
    result = runner.invoke(app, ["inspect", url, "--n", "3"])
    assert result.exit_code == 0, result.output
    assert "16 samples" in result.output and "add=8" in result.output and "remove=8" in result.output
    assert "template:add=8" in result.output and "dropped by reason: {}" in result.output


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
