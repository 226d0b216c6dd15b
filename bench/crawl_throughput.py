"""Crawl throughput against the fixture server with an injected per-response delay (127.0.0.1 only).

The crawl runs as the web_edits flow runs it: the numbered listing is cut into batches of
``--batch-size`` consecutive posts before any download, and ``--batches-in-flight`` batch tasks
(threads, as the flow's task runner) each download their batch's posts in the crawler's shared
threads. Prints the crawler's pairs per second (posts whose answers, original and edit were fetched,
checked and cached) next to (a) the ideal its per-host concurrency limit allows for the requests it
made and (b) a plain sequential requests loop over the same kind of posts, both measured in this run.
Goal: at least 0.8 of ideal and more than 10 times the sequential loop. Bounded: well under 2 minutes.

    python bench/crawl_throughput.py [--posts 400] [--delay 0.05] [--concurrency 16] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "web"))

from ieiw.pipelines.web.build import build_crawl  # noqa: E402
from ieiw.pipelines.web.config import WebEditsConfig  # noqa: E402
from ieiw.pipelines.web.crawl import CrawledPost  # noqa: E402
from ieiw.pipelines.web.pairing import web_edits_stage  # noqa: E402


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


def crawl(
    base: str, tmp: str, concurrency: int, limit: int, batch_size: int, in_flight: int
) -> tuple[float, int, int, list[CrawledPost]]:
    config = WebEditsConfig.model_validate(
        {
            "source": {"kind": "reddit", "base_url": base, "page_size": 100},
            "download": {
                "per_host_concurrency": concurrency,
                "workers": 2 * concurrency,
                "per_host_requests_per_second": 0,
                "allowed_origins": [base],
                "cache_dir": os.path.join(tmp, "cache"),
            },
            "max_posts": limit,
            "batch_size": batch_size,
        }
    )
    setup = build_crawl(config, os.path.join(tmp, "web_edits"))
    started = time.perf_counter()
    listing = setup.crawler.listing()
    batches = iter(lambda: list(itertools.islice(listing, batch_size)), [])
    with ThreadPoolExecutor(in_flight) as tasks:  # the flow's batch tasks, listing pulled as they go
        results = list(tasks.map(setup.crawler.crawl_batch, batches))
    crawled = [item for batch in results for item in batch if isinstance(item, CrawledPost)]
    seconds = time.perf_counter() - started
    requests_made = sum(setup.fetcher.requests_made.values())
    setup.close()
    pairs = sum(1 for c in crawled if any(record.ok for _, record in c.edits))
    return seconds, pairs, requests_made, crawled


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=400)
    parser.add_argument("--sequential-posts", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches-in-flight", type=int, default=2)  # the build's default task threads
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    server = context.Process(target=serve, args=(args.posts, args.delay, ready, stop), daemon=True)
    server.start()
    try:
        base = ready.get(timeout=60)
        with tempfile.TemporaryDirectory() as tmp:
            seconds, pairs, made, crawled = crawl(
                base, tmp, args.concurrency, args.posts, args.batch_size, args.batches_in_flight
            )
            pair_started = time.perf_counter()
            samples = sum(
                1
                for post in crawled
                for r in web_edits_stage(
                    [post], WebEditsConfig.model_validate({"source": {"kind": "reddit"}}).pairing
                )
                if type(r).__name__ == "Sample"
            )
            pairing_seconds = time.perf_counter() - pair_started
        seq_seconds, seq_pairs = sequential(base, args.sequential_posts)
    finally:
        stop.set()
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()

    rate = pairs / seconds
    ideal_seconds = made * args.delay / args.concurrency
    ideal_rate = pairs / ideal_seconds
    seq_rate = seq_pairs / seq_seconds
    print(
        f"delay {args.delay * 1000:.0f} ms/response, per-host concurrency {args.concurrency}, "
        f"{made} requests ({made / max(pairs, 1):.2f} per pair), batches of {args.batch_size} posts, "
        f"{args.batches_in_flight} in flight"
    )
    print(f"crawler:    {pairs} pairs in {seconds:.2f} s = {rate:.1f} pairs/s")
    print(f"ideal:      {ideal_rate:.1f} pairs/s (requests x delay / concurrency: {ideal_seconds:.2f} s)")
    print(f"sequential: {seq_pairs} pairs in {seq_seconds:.2f} s = {seq_rate:.1f} pairs/s")
    print(
        f"pairing stage (same-scene check, one thread): {samples} samples in {pairing_seconds:.2f} s "
        f"= {samples / pairing_seconds:.1f} pairs/s"
    )
    print(f"ratio crawler/ideal:      {rate / ideal_rate:.2f}  (goal >= 0.8)")
    print(f"ratio crawler/sequential: {rate / seq_rate:.1f}  (goal > 10)")


if __name__ == "__main__":
    main()
