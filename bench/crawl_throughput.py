"""Crawl throughput against the fixture server with an injected per-response delay (127.0.0.1 only),
under the build's global per-host limits (Prefect global concurrency limits, on a temporary Prefect
server: :mod:`ieiw.flows.crawl_limits`).

The crawl runs as the web_edits flow runs it: the lead makes the numbered listing, which is cut into
batches of ``--batch-size`` consecutive posts before any download, and ``--batches-in-flight`` batch
tasks per crawling process each download their batch's posts in that process's crawler threads;
``--processes N`` crawls in N processes that share the one global limit, as Dask workers do. Prints
the crawl's pairs per second (posts whose answers, original and edit were fetched, checked and cached)
next to (a) the ideal the per-host concurrency limit allows for the requests it made and (b) a plain
sequential requests loop over the same kind of posts, both measured in this run, and what the global
limiter costs per request (through a slot this process holds; its first slot from the server; and what
Prefect's ``concurrency()`` and ``rate_limit()`` would cost per request). Goal: at least 0.8 of ideal
and more than 10 times the sequential loop. ``--limits process`` measures the process's own limiter.

    python bench/crawl_throughput.py [--posts 400] [--delay 0.05] [--concurrency 16] [--processes 1]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "web"))


def serve(posts: int, delay: float, ready, stop) -> None:
    """The fixture server in its own process, so its threads do not compete with the crawler's GIL."""
    from web_fixture_server import FixtureServer
    from web_scenarios import bulk_site

    site = bulk_site(posts)
    site.page_size = 100
    site.delay = delay
    with FixtureServer(site) as server:
        ready.put(server.base)
        stop.wait()


def crawl_config(base: str, tmp: str, concurrency: int, posts: int, batch_size: int, limits: str):
    from ieiw.pipelines.web.config import WebEditsConfig

    return WebEditsConfig.model_validate(
        {
            "source": {"kind": "reddit", "base_url": base, "page_size": 100},
            "download": {
                "per_host_concurrency": concurrency,
                "workers": 2 * concurrency,
                "per_host_requests_per_second": 0,
                "allowed_origins": [base],
                "limits": limits,
                "cache_dir": os.path.join(tmp, "cache"),
            },
            "max_posts": posts,
            "batch_size": batch_size,
        }
    )


def limits_factory(limits: str):
    from ieiw.flows.crawl_limits import PrefectLimits
    from ieiw.pipelines.web.limits import ProcessLimits

    return PrefectLimits() if limits == "build" else ProcessLimits()


def crawl_batches(config, stage: str, limits: str, batches, in_flight: int, api_url: str | None):
    """Crawl ``batches`` (lists of listed posts) in this process's crawler; returns (start, end, crawled
    posts, requests made)."""
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    from ieiw.pipelines.web.build import build_worker
    from ieiw.pipelines.web.crawl import CrawledPost

    worker = build_worker(config, stage, limits_factory(limits))
    started = time.time()  # wall clock: comparable between the crawling processes
    with ThreadPoolExecutor(in_flight) as tasks:  # the flow's batch tasks
        done = list(tasks.map(worker.crawler.crawl_batch, batches))
    ended = time.time()
    crawled = [item for batch in done for item in batch.items if isinstance(item, CrawledPost)]
    made = sum(worker.fetcher.requests_made.values())
    worker.close()
    worker.fetcher.close()
    return started, ended, crawled, made


def _child(config, stage, limits, queue_in, in_flight, api_url, queue_out, go) -> None:
    from ieiw.pipelines.web.build import build_worker

    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
    build_worker(config, stage, limits_factory(limits))  # imported and built before the clock starts
    queue_out.put("ready")
    go.wait()
    batches = iter(lambda: queue_in.get(), None)
    started, ended, crawled, made = crawl_batches(config, stage, limits, batches, in_flight, api_url)
    queue_out.put((started, ended, len(crawled), sum(1 for c in crawled if _paired(c)), made))


def _paired(crawled) -> bool:
    return any(record.ok for _, record in crawled.edits)


def crawl(base: str, tmp: str, args, api_url: str | None) -> tuple[float, int, int, list]:
    """The lead lists, then the crawling processes download; (seconds, pairs, requests, crawled)."""
    from ieiw.pipelines.web.build import build_lead

    config = crawl_config(base, tmp, args.concurrency, args.posts, args.batch_size, args.limits)
    stage = os.path.join(tmp, "web_edits")
    lead = build_lead(config, stage, limits=limits_factory(args.limits))
    if args.processes > 1:  # the crawling processes start (spawn, imports) before the clock does
        context = multiprocessing.get_context("spawn")
        queue_in, queue_out, go = context.Queue(), context.Queue(), context.Event()
        children = [
            context.Process(
                target=_child,
                args=(config, stage, args.limits, queue_in, args.batches_in_flight, api_url, queue_out, go),
            )
            for _ in range(args.processes)
        ]
        for child in children:
            child.start()
        for _ in children:
            assert queue_out.get(timeout=300) == "ready"
    started = time.time()
    listing = lead.listing.posts()
    listed = list(iter(lambda: list(itertools.islice(listing, args.batch_size)), []))
    listing_requests = sum(lead.fetcher.requests_made.values())
    if args.processes == 1:
        _, ended, crawled, made = crawl_batches(
            config, stage, args.limits, listed, args.batches_in_flight, None
        )
        pairs = sum(1 for c in crawled if _paired(c))
        return ended - started, pairs, made, crawled
    for batch in listed:
        queue_in.put(batch)
    for _ in children:
        queue_in.put(None)
    go.set()
    results = [queue_out.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    ended = max(r[1] for r in results)
    made = sum(r[4] for r in results) + listing_requests
    return ended - started, sum(r[3] for r in results), made, []


def limiter_overhead(base: str, repeats: int = 200) -> dict[str, float]:
    """Milliseconds per request of the global limiter: through a slot this process already holds
    (what nearly every request of a crawl pays), through a host's start gate this process holds (a
    rate set: what it adds to the pacing, at 1000/s), and its first slot of a host (make sure of the
    limit, take a slot from the server); beside them what Prefect's own calls would cost per request:
    ``concurrency()`` (a slot taken from and given back to the server) and ``rate_limit()``."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency, rate_limit
    from prefect.exceptions import ObjectNotFound

    from ieiw.flows.crawl_limits import PrefectLimits, ensure_limits, limit_names
    from ieiw.pipelines.web.config import DownloadConfig
    from ieiw.pipelines.web.limits import limit_host

    host = "overhead." + limit_host(base)
    limits = PrefectLimits()(DownloadConfig(per_host_concurrency=4, per_host_requests_per_second=0))
    first = time.perf_counter()
    with limits.slot(host):
        pass
    first = time.perf_counter() - first
    held = time.perf_counter()
    for _ in range(repeats):
        with limits.slot(host):
            pass
    held = (time.perf_counter() - held) / repeats
    paced = PrefectLimits()(DownloadConfig(per_host_concurrency=4, per_host_requests_per_second=1000))
    gated_host = "gated." + host
    with paced.slot(gated_host):
        pass
    gated = time.perf_counter()
    for _ in range(repeats):
        with paced.slot(gated_host):
            pass
    gated = (time.perf_counter() - gated) / repeats
    raw = "raw." + host
    name = limit_names(raw)[0]
    ensure_limits(raw, 4, 0)
    rate = f"{name}-decaying"
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(rate, 1000, slot_decay_per_second=1000.0)
    per_call = time.perf_counter()
    for _ in range(20):
        with concurrency(name, strict=True, lease_duration=60):
            pass
    per_call = (time.perf_counter() - per_call) / 20
    rated = time.perf_counter()
    for _ in range(20):
        rate_limit(rate, strict=True)
    rated = (time.perf_counter() - rated) / 20
    limits.close()
    paced.close()
    with get_client(sync_client=True) as client:
        for limit in (*limit_names(host), *limit_names(gated_host), *limit_names(raw), rate):
            with contextlib.suppress(ObjectNotFound):  # a limit this run never made
                client.delete_global_concurrency_limit_by_name(limit)
    return {
        "held_slot": held * 1000,
        "held_gate": gated * 1000 - 1.0,  # beyond the 1 ms pacing itself
        "first_slot": first * 1000,
        "concurrency_call": per_call * 1000,
        "rate_limit_call": rated * 1000,
    }


def sequential(base: str, posts: int) -> tuple[float, int]:
    """The plain loop a script would write: one request after another, same posts and images."""
    session = requests.Session()
    started = time.perf_counter()
    listing = session.get(f"{base}/r/PhotoshopRequest/new.json?limit=100", timeout=10).json()
    pairs = 0
    for child in listing["data"]["children"][:posts]:
        post = child["data"]
        tree = session.get(f"{base}{post['permalink'].rstrip('/')}.json", timeout=10).json()
        comment = tree[1]["data"]["children"][0]["data"]
        original = session.get(post["url"], timeout=10).content
        edit_url = comment["body"].split("(", 1)[1].split(")", 1)[0]
        edit = session.get(edit_url, timeout=10).content
        pairs += int(bool(original) and bool(edit))
    return time.perf_counter() - started, pairs


def run(args, api_url: str | None) -> None:
    from ieiw.pipelines.web.config import WebEditsConfig
    from ieiw.pipelines.web.pairing import web_edits_stage

    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    server = context.Process(target=serve, args=(args.posts, args.delay, ready, stop), daemon=True)
    server.start()
    try:
        base = ready.get(timeout=60)
        with tempfile.TemporaryDirectory() as tmp:
            seconds, pairs, made, crawled = crawl(base, tmp, args, api_url)
            pair_started = time.perf_counter()
            settings = WebEditsConfig.model_validate({"source": {"kind": "reddit"}}).pairing
            samples = sum(
                1
                for post in crawled
                for r in web_edits_stage([post], settings)
                if type(r).__name__ == "Sample"
            )
            pairing_seconds = time.perf_counter() - pair_started
        seq_seconds, seq_pairs = sequential(base, args.sequential_posts)
        # after the crawl: the server records the events of Prefect's own calls in the background
        overhead = limiter_overhead(base) if args.limits == "build" else {}
    finally:
        stop.set()
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()

    rate = pairs / seconds
    ideal_seconds = made * args.delay / args.concurrency
    ideal_rate = pairs / ideal_seconds
    seq_rate = seq_pairs / seq_seconds
    where = "global (Prefect concurrency limits)" if args.limits == "build" else "this process's"
    print(
        f"delay {args.delay * 1000:.0f} ms/response, {where} per-host concurrency {args.concurrency}, "
        f"{made} requests ({made / max(pairs, 1):.2f} per pair), batches of {args.batch_size} posts, "
        f"{args.batches_in_flight} in flight in each of {args.processes} crawling process(es)"
    )
    print(f"crawler:    {pairs} pairs in {seconds:.2f} s = {rate:.1f} pairs/s")
    print(f"ideal:      {ideal_rate:.1f} pairs/s (requests x delay / concurrency: {ideal_seconds:.2f} s)")
    print(f"sequential: {seq_pairs} pairs in {seq_seconds:.2f} s = {seq_rate:.1f} pairs/s")
    if samples:
        print(
            f"pairing stage (same-scene check, one thread): {samples} samples in {pairing_seconds:.2f} s "
            f"= {samples / pairing_seconds:.1f} pairs/s"
        )
    print(f"ratio crawler/ideal:      {rate / ideal_rate:.2f}  (goal >= 0.8)")
    print(f"ratio crawler/sequential: {rate / seq_rate:.1f}  (goal > 10)")
    if overhead:
        print(
            "global limiter per request: "
            f"{overhead['held_slot'] * 1000:.0f} us through a slot this process holds, "
            f"{overhead['held_gate'] * 1000:.0f} us more with a rate set (through the start gate it holds, "
            f"beyond the pacing); first slot of a host {overhead['first_slot']:.0f} ms. Per request, "
            f"Prefect's concurrency() would cost {overhead['concurrency_call']:.0f} ms and rate_limit() "
            f"{overhead['rate_limit_call']:.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--sequential-posts", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches-in-flight", type=int, default=2)  # the build's default task threads
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--limits", choices=("build", "process"), default="build")
    args = parser.parse_args()
    if args.limits == "process":
        run(args, None)
        return
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):  # a temporary Prefect server
        run(args, PREFECT_API_URL.value())


if __name__ == "__main__":
    main()
