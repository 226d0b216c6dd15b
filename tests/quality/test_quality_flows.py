"""The ``score`` and ``filter`` Prefect flows end to end on a temporary Prefect server, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from ieiw.storage import manifest


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_score_and_filter_flows_with_artifacts(
    tmp_path, candidates, embedder_config, aesthetic_checkpoint, prefect_server
):
    from prefect.client.orchestration import get_client

    from ieiw.flows.filter import filter_flow
    from ieiw.flows.score import score_flow

    config = {
        "scoring": {
            "embedder": embedder_config.model_dump(),
            "aesthetic_checkpoint": aesthetic_checkpoint,
            "batch_size": 4,
        },
        "policy": {
            "default": {"aesthetic_src_min": -1e9},
            "tasks": {},
            "duplicates": {"clip_min_cosine": 0.9999},
        },
    }
    scored = score_flow(candidates["url"], config=config, shards_per_wave=2)
    assert scored["samples"] == candidates["total"] and scored["scored_now"] == 3
    assert scored["errors"] == {"corrupt_image": 1, "corrupt_json": 1}
    assert score_flow(candidates["url"], config=config)["scored_now"] == 0

    out = str(tmp_path / "final")
    result = filter_flow(candidates["url"], out, config=config)
    assert result["candidates"] == candidates["total"]
    assert result["kept"] + sum(result["dropped"].values()) == candidates["total"]
    assert result["dropped"]["duplicate"] == 1
    assert Path(result["report"]["index_html"]).is_file()
    assert Path(manifest.part_url(out, "x")).parent.is_dir() and Path(out, "manifest.parquet").is_file()

    import anyio

    async def artifact_keys() -> set[str]:
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    keys = anyio.run(artifact_keys)
    assert {
        "quality-score-means",
        "quality-filter-outcomes",
        "quality-filter-histograms",
        "quality-dropped-html",
    } <= keys


def test_cli_score_filter_and_report(tmp_path, candidates, embedder_config, prefect_server):
    from ieiw.flows.commands.quality import register

    app = typer.Typer()
    register(app)
    config = tmp_path / "build.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "quality": {
                    "scoring": {"embedder": embedder_config.model_dump()},
                    "policy": {
                        "default": {"clip_img_sim_min": 0.0},
                        "tasks": {},
                        "duplicates": {"clip_min_cosine": None},
                    },
                }
            }
        )
    )
    runner = CliRunner()
    result = runner.invoke(app, ["score", candidates["url"], "--config", str(config)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["filter", candidates["url"], str(tmp_path / "final"), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["candidates"] == candidates["total"]
    result = runner.invoke(
        app,
        [
            "quality-report",
            candidates["url"],
            str(tmp_path / "final"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "again"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "dropped.html").is_file()
