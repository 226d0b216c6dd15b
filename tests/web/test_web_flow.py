"""The web_edits flow end to end against the fixture server and a real (temporary) Prefect server."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from web_fixture_server import FixtureServer
from web_scenarios import FAULT_PATHS, FAULT_REASONS, GOOD_POSTS, bulk_site, fault_site

from ieiw.flows.web_edits import web_edits
from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.pipelines.web.pairing import generator_info, pair_key
from ieiw.pipelines.web.posts import WebPost
from ieiw.storage import manifest
from ieiw.storage.shards import ShardSpec, expand_shard_urls, iter_samples

HERE = os.path.dirname(__file__)


def _config(base: str, tmp_path, **overrides) -> dict:
    config = {
        "source": {"kind": "reddit", "base_url": base, "page_size": 4},
        "download": {
            "connect_timeout": 1.0,
            "read_timeout": 0.5,
            "deadline_seconds": 1.5,
            "max_retries": 1,
            "backoff_seconds": 0.05,
            "max_bytes": 5 * 1024 * 1024,
            "per_host_requests_per_second": 0,
            "workers": 8,
            "allowed_origins": [base],
            "cache_dir": str(tmp_path / "cache"),
        },
        "batch_size": 4,
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def test_flow_keeps_every_good_pair_and_records_every_bad_one(prefect_api, tmp_path):
    site = fault_site()
    output = str(tmp_path / "out")
    with FixtureServer(site) as server:
        config = WebEditsConfig.model_validate(_config(server.base, tmp_path))
        summary = web_edits(config, output, ShardSpec(max_samples=3))
        first_run = list(site.paths())
        again = web_edits(config, output, ShardSpec(max_samples=3))  # a rerun: everything is done already
        rerun = site.paths()[len(first_run) :]

    frame = manifest.read_manifest(os.path.join(output, "web_edits"))
    frame["drop_reason"] = frame["drop_reason"].fillna("kept")
    kept = frame[frame["kept"]]
    assert dict(zip(kept["image_id"], kept["region_id"])) == {
        "good1": "c1",
        "gallery1": "g1",
        "preview1": "v1",
        "faults1": "f12",
        "busy1": "b1",
    }
    assert set(GOOD_POSTS) == set(kept["image_id"]) and summary["kept"] == 5
    faults = frame[frame["image_id"] == "faults1"]
    reasons = dict(zip(faults["region_id"], faults["drop_reason"]))
    for index, path in enumerate(FAULT_PATHS):
        if path in FAULT_REASONS:
            assert reasons[f"f{index}"] == FAULT_REASONS[path], path
    assert reasons["f12"] == "kept"  # served as text/plain, but the bytes are a JPEG
    assert reasons["f13"] == "edit_not_chosen"  # the 429-then-200 edit is fine, only ranked second
    by_post = frame.groupby("image_id")["drop_reason"].apply(set).to_dict()
    assert by_post["nsfw1"] == {"over_18"} and "orig500" not in by_post  # a 5xx original: retried next run
    assert by_post["text1"] == {"no_original_image"} and by_post["noedits1"] == {"no_edits"}
    assert by_post["chat1"] == {"instruction_empty"}
    assert by_post["good1"] == {"kept", "edit_not_same_scene", "edit_not_chosen"}
    assert frame["key"].is_unique

    samples = list(iter_samples(expand_shard_urls([os.path.join(output, "web_edits", "shards")])))
    assert sorted(s.key for s in samples) == sorted(kept["key"])
    good = next(s for s in samples if s.meta.provenance.image_id == "good1")
    assert (
        good.meta.instruction == "Remove the patch on his suit." and good.meta.instruction_source == "cleaned"
    )
    assert good.meta.provenance.dataset == "reddit:r/PhotoshopRequest"
    assert good.meta.provenance.extra["edit_author"] == "editor1" and good.meta.provenance.extra["op_replied"]
    assert {c["comment"] for c in good.meta.extra["candidates"]} == {"c1", "c2", "c3"}

    # no request it should not make
    assert "/private/edit.jpg" not in first_run  # robots.txt
    assert not {"/img/nsfw.jpg", "/img/nsfw_edit.jpg"} & set(first_run)  # over_18 posts are never downloaded
    assert first_run.count("/robots.txt") == 1
    image_hits = [p for p in first_run if p.startswith("/img/")]
    assert len(image_hits) == len(set(image_hits))  # a shared image (a_graded.jpg) is fetched once
    # the rerun lists again and retries only the deferred post's original (its answers are in the state)
    assert sorted(set(rerun) - {"/r/PhotoshopRequest/new.json", "/robots.txt"}) == [
        "/fault/orig/error500.jpg"
    ]
    assert again["kept"] == 0 and again["resumed_records"] == len(site.posts) - 1

    crawl = summary["crawl"]
    assert crawl["posts_seen"] == len(site.posts) and crawl["downloads_by_outcome"]["ok"] >= 14
    assert crawl["posts_deferred_original_http_500"] == 1 and crawl["posts_by_status"]["deferred"] == 1
    assert again["crawl"]["posts_deferred_original_http_500"] == 1  # retried by the rerun, failing again
    with get_client(sync_client=True) as client:
        keys = {
            a.key
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["web-edits-crawl", "web-edits-counts", "web-edits-requests"])
                )
            )
        }
    assert keys == {"web-edits-crawl", "web-edits-counts", "web-edits-requests"}


def _ok_urls(state_path: str) -> set[str]:
    if not os.path.exists(state_path):
        return set()
    with sqlite3.connect(f"file:{state_path}?mode=ro", uri=True, timeout=5) as db:
        try:
            return {u for (u,) in db.execute("SELECT url FROM downloads WHERE ok = 1")}
        except sqlite3.OperationalError:  # the crawl has not created the table yet
            return set()


def _run_cli(config_path, prefect_api) -> subprocess.Popen:
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "web_crawl_cli.py"), "crawl", str(config_path), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_sigkill_mid_crawl_then_resume(prefect_api, tmp_path):
    site = bulk_site(40)
    site.delay = 0.05
    output = tmp_path / "out"
    state_path = str(output / "web_edits" / "crawl_state.sqlite")
    with FixtureServer(site) as server:
        config = _config(
            server.base,
            tmp_path,
            source={"page_size": 10},
            batch_size=4,
            download={"per_host_concurrency": 2, "workers": 4},
        )
        config_path = tmp_path / "crawl.yaml"
        config_path.write_text(yaml.safe_dump({"output": str(output), "web_edits": config}))

        process = _run_cli(config_path, prefect_api)
        deadline = time.monotonic() + 120
        while len(_ok_urls(state_path)) < 30 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=30)
        done_before_kill = _ok_urls(state_path)
        assert 30 <= len(done_before_kill) < 80, "the crawl should have been killed mid-way"
        committed = manifest.completed_record_ids(str(output / "web_edits"))

        process = _run_cli(config_path, prefect_api)
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr[-3000:]
        summary = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])

    frame = manifest.read_manifest(str(output / "web_edits"))
    generator = generator_info(WebEditsConfig.model_validate(config).pairing)
    expected = {pair_key(_post(p.post_id), p.comments[0].comment_id, generator) for p in site.posts}
    assert frame["key"].is_unique and set(frame[frame["kept"]]["key"]) == expected
    assert summary["resumed_records"] == len(committed) and summary["kept"] == 40 - len(committed)
    samples = list(iter_samples(expand_shard_urls([str(output / "web_edits" / "shards")])))
    assert sorted(s.key for s in samples) == sorted(expected)
    for url in done_before_kill:  # finished before the kill: never downloaded again
        path = url.removeprefix(server.base)
        assert len(site.requests_to(path, status=200)) == 1, path
    for post in site.posts:  # everything else: at most once more (a download in flight at the kill)
        for path in (f"/img/{post.post_id}.jpg", f"/img/{post.post_id}_edit.jpg"):
            assert 1 <= len(site.requests_to(path, status=200)) <= 2, path


def _post(post_id: str) -> WebPost:
    return WebPost(
        post_id=post_id,
        dataset="reddit:r/PhotoshopRequest",
        title="",
        body="",
        original_url=None,
        permalink="",
    )
