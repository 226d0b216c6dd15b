"""Load bench of the review app: many reviewers picking at once against the app on 127.0.0.1.

The app (uvicorn, one process, SQLite unless ``--db`` names another database) runs in a child
process; the simulated reviewers are asyncio tasks with their own HTTP client in this process.
Each reviewer works through its queue: loads a sample, picks two candidates, marks it done,
pausing ``--think-ms`` (uniformly 0.5x to 1.5x) before each action, as a fast person would.

Three runs on one server: the baseline, one reviewer alone; ``--reviewers`` reviewers at once at
that pace (the goal: p99 under 100 ms); and the same number with no pause at all, a stress run
that shows the server's saturation throughput. Printed: p50 and p99 latency of a pick, ratios
against the baseline, throughput, and the check that every pick the app acknowledged is in the
database exactly once (and nothing else is).

    python bench/review_load.py                 # 50 reviewers, 20 picks each, SQLite
    python bench/review_load.py --reviewers 10 --picks 6 --db postgresql+psycopg2://...
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ieiw.model.candidate_shards import CandidateHeader, CandidateSet, CandidateSetting, write_candidate_sets  # noqa: E402
from ieiw.model.review.serve import free_port  # noqa: E402
from ieiw.model.review.store import ReviewStore  # noqa: E402
from ieiw.model.review.tables import Pick, Reviewer  # noqa: E402

CANDIDATES = 8


def write_candidates(folder: str, samples: int, size: int = 16) -> None:
    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.integers(0, 255, (size, size, 3), dtype=np.uint8)

    sets = []
    for i in range(samples):
        settings = [CandidateSetting(seed=i * 100 + k, text_guidance=7.5, image_guidance=1.5, steps=20,
                                     checkpoint="bench") for k in range(CANDIDATES)]
        header = CandidateHeader(key=f"bench{i:05d}", instruction=f"edit {i}", settings=settings)
        sets.append(CandidateSet(header=header, source=image(), candidates=[image() for _ in settings]))
    write_candidate_sets(sets, folder, max_sets=200)


def run_server(db_url: str, candidates: str, port: int) -> None:
    from ieiw.model.candidate_shards import CandidateIndex
    from ieiw.model.review.app import create_app
    from ieiw.model.review.serve import serve

    serve(create_app(ReviewStore(db_url), CandidateIndex.build(candidates)), port=port)


async def reviewer(base: str, token: str, picks: int, think: float, latencies: list[float],
                   acknowledged: set) -> None:
    rng = random.Random(token)

    async def pause() -> None:
        if think > 0:
            await asyncio.sleep(think * rng.uniform(0.5, 1.5))

    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60) as client:
        await pause()
        queue = (await client.get("/api/queue")).json()
        made = 0
        for item in queue:
            if made >= picks:
                break
            await pause()
            view = (await client.get(f"/api/samples/{item['key']}")).json()
            for candidate in view["candidates"][:2]:
                if made >= picks:
                    break
                await pause()
                started = time.perf_counter()
                response = await client.post(f"/api/samples/{item['key']}/picks",
                                             json={"candidate_id": candidate["id"]})
                latencies.append(time.perf_counter() - started)
                response.raise_for_status()
                acknowledged.add((token, candidate["id"]))
                made += 1
            await pause()
            (await client.post(f"/api/samples/{item['key']}/done")).raise_for_status()


async def run_reviewers(base: str, tokens: list[str], picks: int,
                        think: float) -> tuple[list[float], set, float]:
    latencies: list[float] = []
    acknowledged: set = set()
    started = time.perf_counter()
    await asyncio.gather(*(reviewer(base, t, picks, think, latencies, acknowledged) for t in tokens))
    return latencies, acknowledged, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def wait_until_up(base: str, process: multiprocessing.Process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.is_alive():
            raise RuntimeError("the review app exited")
        try:
            if httpx.get(base, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the review app did not start")


def stored_picks(store: ReviewStore) -> list[tuple[str, int]]:
    from sqlalchemy import select

    with store._read() as session:
        query = select(Reviewer.name, Pick.candidate_id).join(Reviewer, Reviewer.id == Pick.reviewer_id)
        return [(name, candidate) for name, candidate in session.execute(query)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reviewers", type=int, default=50)
    parser.add_argument("--picks", type=int, default=20, help="picks per reviewer")
    parser.add_argument("--think-ms", type=float, default=500.0, help="mean pause before each action")
    parser.add_argument("--db", default=None, help="database URL (default: a fresh SQLite file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        db_url = args.db or f"sqlite:///{tmp}/review.sqlite"
        samples_each = (args.picks + 1) // 2
        candidates = f"{tmp}/candidates"
        write_candidates(candidates, samples_each * (2 * args.reviewers + 1))
        store = ReviewStore(db_url)
        from ieiw.model.candidate_shards import iter_candidate_headers

        store.import_candidates(iter_candidate_headers(candidates))
        names = [f"r{i:03d}" for i in range(2 * args.reviewers + 1)]
        tokens = {name: store.add_reviewer(name) for name in names}
        store.assign(per_sample=1)
        by_token = {token: name for name, token in tokens.items()}

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = multiprocessing.get_context("spawn").Process(
            target=run_server, args=(db_url, candidates, port), daemon=True)
        server.start()
        try:
            wait_until_up(base, server)
            think = args.think_ms / 1000.0
            alone, alone_ack, _ = asyncio.run(run_reviewers(base, [tokens[names[0]]], args.picks, think))
            paced_tokens = [tokens[n] for n in names[1:args.reviewers + 1]]
            loaded, loaded_ack, seconds = asyncio.run(run_reviewers(base, paced_tokens, args.picks, think))
            stress_tokens = [tokens[n] for n in names[args.reviewers + 1:]]
            stress, stress_ack, stress_seconds = asyncio.run(
                run_reviewers(base, stress_tokens, args.picks, 0.0))
        finally:
            server.terminate()
            server.join(timeout=10)

        in_db = stored_picks(store)
        expected = {(by_token[t], c) for t, c in alone_ack | loaded_ack | stress_ack}
        lost = expected - set(in_db)
        duplicates = len(in_db) - len(set(in_db))
        unexpected = set(in_db) - expected
        store.close()

    p50, p99 = percentile(loaded, 50), percentile(loaded, 99)
    b50, b99 = percentile(alone, 50), percentile(alone, 99)
    s50, s99 = percentile(stress, 50), percentile(stress, 99)
    print(f"review app load bench: {args.reviewers} concurrent reviewers x {args.picks} picks, "
          f"think {args.think_ms:.0f} ms, db {'sqlite' if args.db is None else args.db.split(':')[0]}")
    print(f"baseline (1 reviewer alone): {len(alone)} picks, p50 {b50:.1f} ms, p99 {b99:.1f} ms")
    print(f"{args.reviewers} reviewers at once: {len(loaded)} picks in {seconds:.2f} s "
          f"({len(loaded) / seconds:.0f} picks/s), p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"mean {statistics.fmean(loaded) * 1000:.1f} ms; ratio to baseline p50 x{p50 / b50:.2f}, "
          f"p99 x{p99 / b99:.2f}")
    print(f"stress, {args.reviewers} reviewers with no pause: {len(stress)} picks in {stress_seconds:.2f} s "
          f"({len(stress) / stress_seconds:.0f} picks/s, saturated), p50 {s50:.1f} ms, p99 {s99:.1f} ms; "
          f"ratio to baseline p50 x{s50 / b50:.2f}, p99 x{s99 / b99:.2f}")
    print(f"database: {len(in_db)} picks stored, {len(expected)} acknowledged, lost {len(lost)}, "
          f"duplicated {duplicates}, unexpected {len(unexpected)}")
    print(f"goal p99 < 100 ms at a reviewer's pace: {'met' if p99 < 100 else 'NOT met'}; no pick lost: "
          f"{'yes' if not lost and not duplicates and not unexpected else 'NO'}")
    if lost or duplicates or unexpected:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
