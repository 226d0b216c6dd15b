"""The team setup for real: Prefect server on PostgreSQL, deployments, a process worker, the UI.

One story, in order: deploy to a process work pool, trigger a run through the API, SIGKILL the
worker mid-run, restart it, run again to completion with the same keys, then open the Prefect UI
and the gallery in headless Chromium.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from team_server import kill_tree, prefect_server_on_postgres, start_worker

from ieiw.flows.deploy import deploy, ensure_gpu_limit, ensure_work_pool
from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
from ieiw.pipelines.removal import RemovalSettings, removal_stage
from ieiw.pipelines.sources.phrasecut import RegionSettings, iter_records
from ieiw.storage import manifest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _wait_state(flow_run_id, final: set[str], seconds: float = 300) -> str:
    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run_id).state
            if state and state.type.value in final:
                return state.type.value
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} did not reach {final} in {seconds}s")


def _committed_parts(stage: Path) -> int:
    folder = stage / "manifest"
    return len([p for p in folder.iterdir() if p.suffix == ".parquet"]) if folder.exists() else 0


def test_deploy_worker_kill_resume_and_ui(tmp_path):
    from phrasecut_fixture import write_phrasecut

    annotations, images = write_phrasecut(str(tmp_path / "data"), n_images=24, size=192)
    config_path = tmp_path / "build.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "name": "team",
                "output": str(tmp_path / "out"),
                "shards": {"max_samples": 4},
                "runner": {"max_workers": 1, "max_in_flight": 1},
                "removal": {
                    "source": {"annotations": [annotations], "images": images},
                    "batch_size": 2,
                    "dilation": 15,
                },
            }
        )
    )
    stage = tmp_path / "out" / "removal"
    worker_log = str(tmp_path / "worker.log")

    with prefect_server_on_postgres() as (api_url, env), temporary_settings({PREFECT_API_URL: api_url}):
        os.environ["PREFECT_API_URL"] = api_url  # `prefect deploy` runs as a subprocess
        try:
            assert ensure_work_pool() is True
            ensure_gpu_limit(1)
            deploy(["removal"])
        finally:
            del os.environ["PREFECT_API_URL"]

        worker = start_worker(env, worker_log)
        first = run_deployment("ieiw_build/removal", parameters={"config": str(config_path)}, timeout=0)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and _committed_parts(stage) < 2:
            time.sleep(0.05)
        kill_tree(worker.pid)  # the worker and the flow run it started, mid-run
        done = manifest.completed_record_ids(str(stage))
        assert 0 < len(done) < 48, (
            f"the kill did not land mid-way; worker log:\n{open(worker_log).read()[-2000:]}"
        )

        worker = start_worker(env, worker_log)
        try:
            second = run_deployment("ieiw_build/removal", parameters={"config": str(config_path)}, timeout=0)
            state = _wait_state(second.id, {"COMPLETED", "FAILED", "CRASHED"})
            assert state == "COMPLETED", open(worker_log).read()[-3000:]
        finally:
            kill_tree(worker.pid)

        records = list(iter_records(annotations, images))
        expected = removal_stage(
            records, build_inpainter(InpaintConfig()), RemovalSettings(region=RegionSettings(dilation=15))
        )
        frame = manifest.read_manifest(str(stage))
        assert frame["key"].is_unique and sorted(frame["key"]) == sorted(r.key for r in expected)
        assert not [p for p in stage.rglob("*") if ".tmp-" in p.name]
        assert first.id != second.id

        _check_ui_and_gallery(api_url, second.id, tmp_path)


def _check_ui_and_gallery(api_url: str, flow_run_id, tmp_path: Path) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is missing: `make test` installs it (scripts/test_system_deps.sh)")
    from playwright.sync_api import sync_playwright

    ui = api_url.removesuffix("/api")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
        page.get_by_text("Completed").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "ui-flow-run.png"), full_page=True)
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["build-summary", "data-card"])),
            )
        by_key = {artifact.key: artifact for artifact in found}
        page.goto(f"{ui}/artifacts/artifact/{by_key['build-summary'].id}", wait_until="networkidle")
        page.get_by_text("Gallery:").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "ui-build-summary.png"), full_page=True)
        page.goto(f"{ui}/artifacts/artifact/{by_key['data-card'].id}", wait_until="networkidle")
        page.get_by_text("Sources and licenses").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "ui-data-card.png"), full_page=True)
        page.goto(f"{ui}/artifacts", wait_until="networkidle")
        page.get_by_text("removal-counts").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "ui-artifacts.png"), full_page=True)

        page.goto(f"file://{tmp_path / 'out' / 'gallery.html'}")
        images = page.locator("img")
        assert images.count() >= 40
        loaded = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert loaded, "some gallery images did not load"
        page.screenshot(path=str(tmp_path / "gallery.png"))
        browser.close()
