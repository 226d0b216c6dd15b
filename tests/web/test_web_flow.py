"""The web_edits stage end to end through the one runner, against the fixture server and a real
(temporary) Prefect server."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from web_fixture_server import FixtureServer
from web_scenarios import FAULT_PATHS, FAULT_REASONS, GOOD_POSTS, LINK_REASONS, bulk_site, fault_site

from ieiw.flows.commands.web import crawl_counts, load_web_config, run_crawl
from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.pipelines.web.downloader import DownloadRecords
from ieiw.pipelines.web.pairing import generator_info, pair_key
from ieiw.pipelines.web.posts import WebPost
from ieiw.storage import manifest
from ieiw.storage.config import ConfigError
from ieiw.storage.shards import ShardSpec, expand_shard_urls, iter_samples
from ieiw.storage.stage_folder import StageChanged

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
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    return config


def test_flow_keeps_every_good_pair_and_records_every_bad_one(prefect_api, tmp_path):
    site = fault_site()
    output = str(tmp_path / "out")
    with FixtureServer(site) as server:
        config = WebEditsConfig.model_validate(_config(server.base, tmp_path))
        summary = run_crawl(config, output, ShardSpec(max_samples=3))
        first_run = list(site.paths())
        # a rerun: everything is done already but the deferred post, which it retries (failing again)
        again = run_crawl(config, output, ShardSpec(max_samples=3))
        rerun = site.paths()[len(first_run) :]
        kept_before = set(manifest.read_manifest(os.path.join(output, "web_edits"))["key"])
        site.images["/fault/orig/error500.jpg"] = site.images["/img/astronaut.jpg"]  # the server recovered
        recovered = run_crawl(config, output, ShardSpec(max_samples=3))

    frame = manifest.read_manifest(os.path.join(output, "web_edits"))
    frame["drop_reason"] = frame["drop_reason"].fillna("kept")
    kept = frame[frame["kept"]]
    assert dict(zip(kept["image_id"], kept["region_id"])) == {
        "orig500": "o1",  # deferred twice, kept by the third run
        "good1": "c1",
        "gallery1": "g1",
        "preview1": "v1",
        "faults1": "f12",
        "busy1": "b1",
        "links1": "l2-0",
    }
    assert {*GOOD_POSTS, "orig500"} == set(kept["image_id"]) and summary.kept == len(GOOD_POSTS)
    faults = frame[frame["image_id"] == "faults1"]
    reasons = dict(zip(faults["region_id"], faults["drop_reason"]))
    for index, path in enumerate(FAULT_PATHS):
        if path in FAULT_REASONS:
            assert reasons[f"f{index}"] == FAULT_REASONS[path], path
    assert reasons["f12"] == "kept"  # served as text/plain, but the bytes are a JPEG
    assert reasons["f13"] == "edit_not_chosen"  # the 429-then-200 edit is fine, only ranked second
    by_post = frame.groupby("image_id")["drop_reason"].apply(set).to_dict()
    assert by_post["nsfw1"] == {"over_18"} and by_post["orig500"] == {"kept"}  # a 5xx original: retried
    assert by_post["text1"] == {"no_original_image"} and by_post["noedits1"] == {"no_edits"}
    assert by_post["chat1"] == {"instruction_empty"}
    assert by_post["good1"] == {"kept", "edit_not_same_scene", "edit_not_chosen"}
    assert frame["key"].is_unique

    # every link of a post or an answer has its row: fetched, or dropped with its reason
    port = server.base.rsplit(":", 1)[1]
    links = frame[frame["image_id"] == "links1"]
    detail = links["drop_detail"].fillna("")
    for link, reason in LINK_REASONS.items():
        url = link.format(base=server.base, port=port)
        rows = links[detail.str.startswith(url + ":") | detail.str.startswith(url + " (")]
        assert list(rows["drop_reason"]) == [reason], (url, rows[["region_id", "drop_reason", "drop_detail"]])
    post_links = links[links["drop_reason"] == "post_link_not_used"]
    assert sorted(post_links["drop_detail"]) == [
        "file:///tmp/x.png (unsupported_scheme)",
        "https://example.org/about (not_an_image_link)",
        "https://example.org/ref.jpg (image_link)",
    ]
    assert set(links["region_id"]) == {
        *(f"l1-{i}" for i in range(4)),
        "l1~0",
        "l1~1",
        *(f"l2-{i}" for i in range(4)),
        "l2~0",
        "l2~1",
        "post~0",
        "post~1",
        "post~2",
    }
    # links without an image extension, to other origins or schemes are never asked for
    assert not [p for p in first_run if p.startswith("/go/")]

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
    # the deferred post's batch committed without it; each rerun offers it again as a batch of its own
    assert again.kept == 0 and again.records_committed_before == len(site.posts) and again.records == 1
    assert again.batches == 1 and not again.dropped

    crawl, crawl_again = crawl_counts(summary), crawl_counts(again)
    assert crawl["posts_seen"] == len(site.posts) and crawl["downloads_by_outcome"]["ok"] >= 14
    assert crawl["downloads_this_run"]["ok"] >= 14 and crawl["downloads_fetched"] == sum(
        crawl["downloads_this_run"].values()
    )
    # every request to the site counted once: the listing's in the lead, each batch's in its own tally
    assert crawl["requests_by_host"][server.base] == len(first_run)
    assert crawl_again["requests_by_host"] == {server.base: len(rerun)}
    assert crawl_again["posts_listed_before"] == len(site.posts)  # the rerun keeps the recorded order
    assert crawl["posts_deferred_original_http_500"] == 1 and crawl["posts_by_status"]["deferred"] == 1
    assert crawl["posts_waiting"] == {"original_http_500": 1}
    assert crawl_again["posts_deferred_original_http_500"] == 1  # retried by the rerun, failing again
    assert crawl_again["posts_retried"] == 1 and crawl_again["posts_waiting"] == {"original_http_500": 1}
    # once its original downloads, it is paired like any other post: its key is the one it always had
    assert recovered.records == 1 and recovered.kept == 1 and crawl_counts(recovered)["posts_waiting"] == {}
    generator = generator_info(config.pairing)
    assert set(frame["key"]) - kept_before == {pair_key(_post("orig500"), "o1", generator)}
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


def _ok_urls(stage: str) -> set[str]:
    """The URLs whose downloads finished: the records every worker reads before fetching (on the
    build's store, beside the stage's other crawl files)."""
    return {record.url for record in DownloadRecords(os.path.join(stage, "crawl", "downloads")) if record.ok}


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


KILL_SEEDS = [3, 17, 2024]
KILL_POSTS = 24


def _kill_config(base: str, tmp_path) -> dict:
    # generous timeouts: the site has no faults, and a timeout on a loaded machine would defer a post
    # in one run and not in the other
    return _config(
        base,
        tmp_path,
        source={"page_size": 10},
        batch_size=4,
        download={
            "per_host_concurrency": 2,
            "workers": 4,
            "read_timeout": 10.0,
            "deadline_seconds": 30.0,
            "max_retries": 3,
        },
    )


def _kill_site():
    site = bulk_site(KILL_POSTS)
    site.delay = 0.05
    return site


def _committed_view(stage: str) -> tuple[list[str], set[str]]:
    """What readers see of a stage: the keys in its committed shards (each once) and its committed
    batches; checks that no reader sees an uncommitted shard or a key twice."""
    rows = manifest.read_table(stage, columns=["key", "kept", "shard", "batch"]).to_pylist()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a key committed twice"
    shard_names = {r["shard"] for r in rows if r["shard"]}
    for urls in (manifest.reader_shards(stage), expand_shard_urls([os.path.join(stage, "shards")])):
        assert {os.path.basename(u) for u in urls} == shard_names  # committed shards, nothing else
        seen = [s.key for s in iter_samples(urls)]
        assert len(seen) == len(set(seen)) and set(seen) == {r["key"] for r in rows if r["kept"]}
    return keys, {r["batch"] for r in rows}


@pytest.fixture(scope="module")
def uninterrupted(prefect_api, tmp_path_factory) -> tuple[set[str], set[str], set[str]]:
    """(keys, kept keys, batch names) of the kill scenario crawled once without interruption."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    with FixtureServer(_kill_site()) as server:
        config = WebEditsConfig.model_validate(_kill_config(server.base, tmp_path))
        run_crawl(config, str(tmp_path / "out"))
    stage = str(tmp_path / "out" / "web_edits")
    keys, batches = _committed_view(stage)
    frame = manifest.read_manifest(stage)
    return set(keys), set(frame[frame["kept"]]["key"]), batches


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_sigkill_at_random_points_then_resume(prefect_api, tmp_path, seed, uninterrupted):
    """Two SIGKILLs at points drawn from ``seed`` (after some downloads, then a random pause), then a
    rerun: readers never see a duplicate or an uncommitted shard, and the end equals an uninterrupted
    crawl, batch names included; nothing downloaded before a kill is downloaded again."""
    rng = random.Random(seed)
    site = _kill_site()
    output = tmp_path / "out"
    stage = str(output / "web_edits")
    killed_running = []
    with FixtureServer(site) as server:
        config = _kill_config(server.base, tmp_path)
        config_path = tmp_path / "crawl.yaml"
        config_path.write_text(yaml.safe_dump({"output": str(output), "web_edits": config}))
        for _ in range(2):
            already = len(_ok_urls(stage))  # the kill comes after some of what this run downloads
            threshold = rng.randint(already, max(already, 2 * KILL_POSTS - 1))
            pause = rng.uniform(0.0, 0.4)
            process = _run_cli(config_path, prefect_api)
            deadline = time.monotonic() + 120
            while len(_ok_urls(stage)) < threshold and process.poll() is None:
                assert time.monotonic() < deadline, "the crawl made no progress"
                time.sleep(0.02)
            time.sleep(pause)
            killed_running.append(process.poll() is None)
            os.kill(process.pid, signal.SIGKILL)
            process.communicate(timeout=30)
            keys, batches = _committed_view(stage)  # after each kill: what a reader sees is whole
            print(
                f"seed {seed}: killed after {threshold} downloads + {pause:.2f} s "
                f"({'running' if killed_running[-1] else 'already done'}): "
                f"{len(batches)} batches, {len(keys)} rows committed"
            )
        done_before = _ok_urls(stage)
        asked_before = len(site.log)
        committed = manifest.completed_record_ids(stage)

        process = _run_cli(config_path, prefect_api)
        stdout, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr[-3000:]
        summary = json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])

    assert any(killed_running), "no kill landed while the crawl ran"
    keys, batches = _committed_view(stage)
    expected_keys, expected_kept, expected_batches = uninterrupted
    assert set(keys) == expected_keys and len(keys) == len(expected_keys)
    assert batches == expected_batches  # the same batches, whatever was killed where
    frame = manifest.read_manifest(stage)
    generator = generator_info(WebEditsConfig.model_validate(config).pairing)
    assert (
        set(frame[frame["kept"]]["key"])
        == expected_kept
        == {pair_key(_post(p.post_id), p.comments[0].comment_id, generator) for p in site.posts}
    )
    assert summary["records_committed_before"] == len(committed)
    assert summary["kept"] == KILL_POSTS - len(committed)
    # the finished run left no shard that no part lists
    on_disk = {os.path.basename(u) for u in os.listdir(os.path.join(stage, "shards")) if u.endswith(".tar")}
    assert on_disk == {os.path.basename(u) for u in manifest.committed_shards(stage)}
    for url in done_before:  # downloaded before the last kill: not asked again
        path = url.removeprefix(server.base)
        assert not [e for e in site.log[asked_before:] if e.path == path], path
    for post in site.posts:  # everything at most once more per kill (a download in flight)
        for path in (f"/img/{post.post_id}.jpg", f"/img/{post.post_id}_edit.jpg"):
            assert 1 <= len(site.requests_to(path, status=200)) <= 3, path


def test_a_changed_pairing_setting_stops_the_rerun_and_rebuild_redoes_it(prefect_api, tmp_path):
    site = bulk_site(4)
    output = str(tmp_path / "out")
    stage = os.path.join(output, "web_edits")
    with FixtureServer(site) as server:
        config = _config(server.base, tmp_path, batch_size=2)
        first = run_crawl(WebEditsConfig.model_validate(config), output)
        first_keys = set(manifest.read_manifest(stage)["key"])
        faster = _config(
            server.base, tmp_path, batch_size=3, download={"workers": 2, "per_host_concurrency": 1}
        )
        again = run_crawl(WebEditsConfig.model_validate(faster), output)  # operational only: resumes
        stricter = _config(server.base, tmp_path, batch_size=2, pairing={"max_edits_per_post": 2})
        with pytest.raises(StageChanged) as changed:
            run_crawl(WebEditsConfig.model_validate(stricter), output)
        rebuilt = run_crawl(WebEditsConfig.model_validate(stricter), output, rebuild="yes")
    assert first.kept == 4 and again.kept == 0 and again.records_committed_before == 4 and again.records == 0
    assert "web_edits.pairing.max_edits_per_post: 1 -> 2" in str(changed.value)
    assert rebuilt.rebuilt and rebuilt.records_committed_before == 0 and rebuilt.kept == 4
    generator = generator_info(WebEditsConfig.model_validate(stricter).pairing)
    frame = manifest.read_manifest(stage)
    assert set(frame[frame["kept"]]["key"]) == {
        pair_key(_post(p.post_id), p.comments[0].comment_id, generator) for p in site.posts
    }
    assert not first_keys & set(frame["key"])  # nothing of the first settings is left


def _post(post_id: str) -> WebPost:
    return WebPost(
        post_id=post_id,
        dataset="reddit:r/PhotoshopRequest",
        title="",
        body="",
        original_url=None,
        permalink="",
    )


def test_crawl_reads_a_build_config_and_options_override_its_section(tmp_path):
    """`ieiw crawl` reads the build config through the one loader (paths relative to the file) and the
    command line overrides its web_edits section; a bad option or a missing dump is one line."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "dump.zst").write_bytes(b"")
    config_path = folder / "crawl.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "output": "out",
                "shards": {"max_samples": 7},
                "web_edits": {
                    "source": {"kind": "reddit", "subreddits": ["PhotoshopRequest"]},
                    "download": {"cache_dir": "cache"},
                    "max_posts": 10,
                },
            }
        )
    )
    config, output, build = load_web_config(config_path, {"max_posts": 3, "subreddits": ["picrequests"]})
    assert output == str(folder / "out") and build is not None and build.shards.max_samples == 7
    assert config.max_posts == 3 and config.source.subreddits == ["picrequests"]
    assert config.download.cache_dir == str(folder / "cache")  # relative to the config file
    dumps, _, _ = load_web_config(config_path, {"submissions": [str(folder / "dump.zst")], "comments": []})
    assert dumps.source.kind == "reddit_dump" and dumps.source.submissions == [str(folder / "dump.zst")]
    assert dumps.source.subreddits == ["PhotoshopRequest"] and dumps.max_posts == 10

    with pytest.raises(ConfigError) as bad:
        load_web_config(config_path, {"batch_size": "many"})
    assert str(bad.value).startswith(f"{config_path}: web_edits.batch_size:") and "\n" not in str(bad.value)
    with pytest.raises(ConfigError) as missing:
        load_web_config(None, {"submissions": [str(folder / "gone.zst")], "output": str(tmp_path)})
    assert "web_edits.source.submissions: no file" in str(missing.value)
    with pytest.raises(ConfigError) as no_output:
        load_web_config(None, {})
    assert "output: required" in str(no_output.value)


def test_the_crawl_on_a_two_process_dask_cluster_matches_threads(prefect_api, tmp_path):
    """Batches on two Dask worker processes, each with its own crawl (no state file: the lead records
    what they report) under the build's global limits: the same batches and keys as on threads, and
    every request to the site counted once in the summary."""
    from ieiw.flows.config import RunnerConfig
    from ieiw.flows.runners import make_task_runner

    site = bulk_site(8)
    dask = RunnerConfig(task_runner="dask", max_workers=2, gpus="none")
    with FixtureServer(site) as server:
        config = WebEditsConfig.model_validate(_config(server.base, tmp_path, batch_size=3))
        threads = run_crawl(config, str(tmp_path / "threads"))
        asked = len(site.log)
        on_dask = run_crawl(config, str(tmp_path / "dask"), runner=dask, task_runner=make_task_runner(dask))
        asked_dask = len(site.log) - asked
    a, b = (str(tmp_path / name / "web_edits") for name in ("threads", "dask"))
    assert on_dask.kept == threads.kept == 8 and on_dask.batches == threads.batches == 3
    assert _committed_view(a)[1] == _committed_view(b)[1]  # the same batches
    assert sorted(manifest.read_manifest(a)["key"]) == sorted(manifest.read_manifest(b)["key"])
    crawl = crawl_counts(on_dask)
    assert crawl["posts_seen"] == 8 and crawl["posts_crawled"] == 8
    assert sum(crawl["requests_by_host"].values()) == asked_dask
    assert crawl["downloads_this_run"] == crawl_counts(threads)["downloads_this_run"]


def test_a_crawl_left_open_is_not_reused_after_a_rebuild_wiped_its_state(tmp_path):
    """A run that died after listing leaves this process's lead crawl (its state file) open; a rebuild
    deletes the stage's folder and with it the state file: the next run builds a new lead crawl on the
    new state file, rather than writing the listing and the outcomes into the deleted one."""
    import itertools

    from ieiw.pipelines.web.stage import WebEditsStage
    from ieiw.storage.runner import LOADS, RunOptions, ThreadExecutor, run_stage

    site = bulk_site(4)
    with FixtureServer(site) as server:
        config = WebEditsConfig.model_validate(_config(server.base, tmp_path, batch_size=2))
        stage = WebEditsStage(config, str(tmp_path / "out" / "web_edits"))
        key = stage.lead_spec().key
        with ThreadExecutor(2) as executor:
            assert run_stage(stage, executor).kept == 4
            loads = LOADS[key]
            assert len(list(itertools.islice(stage.records(), 2))) == 2  # then the run died: no finish
            assert LOADS[key] == loads + 1
            summary = run_stage(stage, executor, RunOptions(rebuild="yes"))
    assert summary.rebuilt and summary.kept == 4
    state = tmp_path / "out" / "web_edits" / "crawl_state.sqlite"
    assert state.exists()
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM listing").fetchone()[0] == 4
        assert db.execute("SELECT COUNT(*) FROM downloads WHERE ok = 1").fetchone()[0] >= 8
        assert db.execute("SELECT COUNT(*) FROM posts WHERE status = 'crawled'").fetchone()[0] == 4
    assert len(_ok_urls(str(tmp_path / "out" / "web_edits"))) >= 8
    assert not os.listdir(tmp_path / "out" / "web_edits" / "crawl" / "outcomes")  # all recorded
    assert LOADS[key] == loads + 2  # the stale crawl was replaced, once
