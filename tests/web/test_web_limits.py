"""Per-host limits that hold for the whole build, not per worker: two Dask worker processes with 16
crawler threads each crawl two hosts (listings, answers and originals on one, the edits on the other)
whose image bodies arrive slowly, against a real Prefect server; each host counts its requests in
flight and when each arrived. Under the build's limits (Prefect global concurrency limits per host: its
slots, and its start gate that paces the rate)
neither host ever sees more than ``per_host_concurrency`` requests in flight nor more than
``per_host_requests_per_second`` requests start within any second (less the few milliseconds a request
takes to arrive); with each process's own limits (the control) the same crawl exceeds them, so the
measurement would see it."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack

import pytest
from prefect.client.orchestration import get_client
from web_fixture_server import FixtureServer, HostMeter
from web_scenarios import bulk_site

from ieiw.flows.commands.web import crawl_counts, run_crawl
from ieiw.flows.config import RunnerConfig
from ieiw.flows.crawl_limits import PrefectLimits, limit_names
from ieiw.flows.runners import make_task_runner
from ieiw.pipelines.web.config import DownloadConfig, WebEditsConfig
from ieiw.pipelines.web.limits import limit_host
from ieiw.storage import manifest

CONCURRENCY = 2  # requests in flight per host
RATE = 5.0  # request starts per second per host
# A host sees a request some milliseconds after the limiter let it go, and not always the same (up to
# 100 ms on a loaded machine): a window this much shorter than a second allows for that (a limit that
# did not hold shows far more).
JITTER = 0.1
POSTS = 12
BODY_SECONDS = 0.5  # each image body streams this long: a request stays in flight to be seen
DASK = RunnerConfig(task_runner="dask", max_workers=2, gpus="none")


def _crawl(tmp_path, limits: str) -> tuple[dict[str, HostMeter], object, list[str]]:
    """Crawl a fresh two-host site on two Dask workers; (meters by host, summary, the hosts' bases)."""
    site = bulk_site(POSTS)
    site.body_seconds = BODY_SECONDS
    with ExitStack() as stack:
        main = stack.enter_context(FixtureServer(site))
        edits = stack.enter_context(FixtureServer(site, primary=False))
        for post in site.posts:  # the answers' images live on the second host
            for comment in post.comments:
                comment.image_paths = [edits.base + path for path in comment.image_paths]
        config = WebEditsConfig.model_validate(
            {
                "source": {"kind": "reddit", "base_url": main.base, "page_size": 25},
                "download": {
                    "per_host_concurrency": CONCURRENCY,
                    "per_host_requests_per_second": RATE,
                    "workers": 16,
                    "limits": limits,
                    "allowed_origins": [main.base, edits.base],
                    "read_timeout": 20.0,
                    "deadline_seconds": 60.0,
                    "max_retries": 3,
                    "cache_dir": str(tmp_path / "cache"),
                },
                "batch_size": 2,
            }
        )
        started = time.monotonic()
        summary = run_crawl(config, str(tmp_path / "out"), runner=DASK, task_runner=make_task_runner(DASK))
        seconds = time.monotonic() - started
        meters = {limit_host(main.base): main.meter, limit_host(edits.base): edits.meter}
        print(f"limits {limits}: crawled in {seconds:.1f} s")
        for host, meter in meters.items():
            span = max(meter.arrivals) - min(meter.arrivals)
            print(
                f"  {host}: {len(meter.arrivals)} requests ({(len(meter.arrivals) - 1) / span:.1f}/s over "
                f"{span:.1f} s), at most {meter.max_in_flight} in flight, at most "
                f"{meter.max_in_window(1.0 - JITTER)} started within {1 - JITTER:.2f} s, "
                f"shortest gap between starts {meter.min_gap() * 1000:.0f} ms"
            )
        return meters, summary, [main.base, edits.base]


def test_two_dask_workers_with_16_threads_each_keep_every_hosts_limits(prefect_api, tmp_path):
    meters, summary, bases = _crawl(tmp_path, "build")
    assert summary.kept == POSTS and crawl_counts(summary)["posts_crawled"] == POSTS
    for host, meter in meters.items():
        assert meter.max_in_flight <= CONCURRENCY, (host, meter.max_in_flight)
        assert meter.max_in_window(1.0 - JITTER) <= RATE, (host, sorted(meter.arrivals))
        assert len(meter.arrivals) >= POSTS
    # the slow bodies kept the hosts busy up to their limits: exceeding them would have been seen
    assert max(m.max_in_flight for m in meters.values()) == CONCURRENCY
    # the limits the lead and the workers set up on the Prefect server, given back once the crawl ended
    with get_client(sync_client=True) as client:
        for base in bases:
            name, gate = limit_names(limit_host(base))
            assert client.read_global_concurrency_limit_by_name(name).limit == CONCURRENCY
            assert client.read_global_concurrency_limit_by_name(gate).limit == 1  # the start gate
            deadline = time.monotonic() + 30
            for limit in (name, gate):
                while client.read_global_concurrency_limit_by_name(limit).active_slots:
                    assert time.monotonic() < deadline, f"{limit}: slots still held after the crawl"
                    time.sleep(0.2)
    stage = os.path.join(tmp_path, "out", "web_edits")
    assert len(manifest.read_manifest(stage)) >= POSTS


def test_each_processs_own_limits_would_be_exceeded(prefect_api, tmp_path):
    """The control: the same crawl with each process's own limits (two workers and the lead) goes past
    the per-host limits, so the test above would see a limiter that did not hold."""
    meters, summary, _ = _crawl(tmp_path, "process")
    assert summary.kept == POSTS
    exceeded = {
        host: (m.max_in_flight, m.max_in_window(1.0 - JITTER))
        for host, m in meters.items()
        if m.max_in_flight > CONCURRENCY or m.max_in_window(1.0 - JITTER) > RATE
    }
    assert exceeded, {h: (m.max_in_flight, m.max_in_window(1.0 - JITTER)) for h, m in meters.items()}


def test_a_slot_is_held_through_the_body_and_lent_within_the_process(prefect_api):
    """One process, Prefect's limits: 12 threads, 3 slots; a request holds its slot until its body is
    read, the process takes each slot from the server once and gives it back when idle."""
    from concurrent.futures import ThreadPoolExecutor

    from ieiw.pipelines.web.fetcher import SafeFetcher

    site = bulk_site(12)
    site.body_seconds = 0.3
    with FixtureServer(site) as server:
        download = DownloadConfig(
            per_host_concurrency=3,
            per_host_requests_per_second=0,
            allowed_origins=[server.base],
            read_timeout=10.0,
            respect_robots=False,
        )
        limits = PrefectLimits(linger_seconds=0.3)
        fetcher = SafeFetcher(download, limits=limits(download))
        paths = [f"/img/{post.post_id}.jpg" for post in site.posts]
        with ThreadPoolExecutor(12) as pool:
            bodies = list(pool.map(lambda p: fetcher.get(server.base + p).body, paths))
        assert bodies == [site.images[p] for p in paths]
        assert server.meter.max_in_flight == 3  # the body counts: 12 threads, never more than 3
        assert fetcher.limits.acquisitions() == 3  # each slot taken once, lent to request after request
        name = limit_names(limit_host(server.base))[0]
        deadline = time.monotonic() + 10
        with get_client(sync_client=True) as client:  # idle slots go back to the server
            while any(fetcher.limits.held().values()) or (
                client.read_global_concurrency_limit_by_name(name).active_slots
            ):
                assert time.monotonic() < deadline, fetcher.limits.held()
                time.sleep(0.05)
        fetcher.close()


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "[::1]:443", "i.redd.it", "a%b&c<d>e/f"])
def test_limit_names_are_names_prefect_accepts(host):
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    for name in limit_names(host):
        assert GlobalConcurrencyLimitCreate(name=name, limit=1).name == name


def test_without_a_prefect_server_the_build_limits_refuse_to_hold_per_process():
    """Prefect's ephemeral mode would give each process a server of its own, and limits per process
    again: the build's limits say so instead, in one line."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ieiw.flows.crawl_limits import LimitUnavailable

    with temporary_settings(updates={PREFECT_API_URL: None}), pytest.raises(LimitUnavailable) as refused:
        PrefectLimits().prepare(DownloadConfig(), ["i.redd.it"])
    assert "PREFECT_API_URL" in str(refused.value) and "\n" not in str(refused.value)
