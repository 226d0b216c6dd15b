"""Bench of the VLM judge's request pipeline against a local OpenAI-compatible server.

The server (``tests/chat_server.py``, checking every request's shape: two images, the rubric)
answers each request after ``--latency`` seconds, as a served VLM would. Measured in one run:

1. the baseline: ``--baseline-pairs`` pairs with one request in flight (the serial rate);
2. ``--pairs`` pairs with ``--concurrency`` requests in flight, asked the way the score stage asks
   them (``--batch`` pairs per judge call, a few batches ahead): pairs/s against the ideal for that
   concurrency (``concurrency / latency``; the goal is at least 0.8) and against the serial baseline;
3. the same pairs again through the answer cache: the requests it sent (the goal: zero) and its rate.

    python bench/judge.py                          # 500 pairs, 200 ms per answer, 16 in flight
    python bench/judge.py --pairs 60 --latency 0.05 --concurrency 8   # a quick run
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test server

from chat_server import ChatServer  # noqa: E402
from judge_server import check_judge_request, judge_answer  # noqa: E402

from ieiw.quality.judge import Judge, JudgeConfig, JudgeRequest  # noqa: E402
from ieiw.quality.judge_backends import OpenAIJudge  # noqa: E402
from ieiw.quality.scoring import JUDGE_BACKLOG  # noqa: E402
from ieiw.storage.answer_cache import PromptCache  # noqa: E402


def jpeg(seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pairs(n: int, size: int, offset: int = 0) -> list[JudgeRequest]:
    tasks = ["remove", "add", "replace", "web_edit", "segmentation"]
    return [
        JudgeRequest(
            f"pair-{i}",
            tasks[i % len(tasks)],
            f"edit pair number {i}",
            jpeg(2 * i, size),
            jpeg(2 * i + 1, size),
        )
        for i in range(offset, offset + n)
    ]


def judge_for(server: ChatServer, concurrency: int, cache_dir: str | None) -> Judge:
    config = JudgeConfig(model="bench-judge", base_url=server.base_url, max_in_flight=concurrency, timeout=30)
    return Judge(config, OpenAIJudge(config), PromptCache(cache_dir) if cache_dir else None)


def run(judge: Judge, requests: list[JudgeRequest], batch: int) -> tuple[float, int, int]:
    """Judge ``requests`` as the score stage does (``batch`` pairs per call, up to ``JUDGE_BACKLOG``
    batches in flight while the next are sent); returns seconds, failed judgements, requests sent."""
    sent = judge.requests_sent
    started = time.perf_counter()
    waiting: deque = deque()
    judged = []
    for start in range(0, len(requests), batch):
        waiting.append(judge.submit(requests[start : start + batch]))
        while len(waiting) > JUDGE_BACKLOG:
            judged += waiting.popleft().result()
    while waiting:
        judged += waiting.popleft().result()
    return time.perf_counter() - started, sum(not j.ok for j in judged), judge.requests_sent - sent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer")
    parser.add_argument("--concurrency", type=int, default=16, help="max_in_flight")
    parser.add_argument(
        "--batch", type=int, default=64, help="pairs per judge call (the score stage's batch)"
    )
    parser.add_argument("--baseline-pairs", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    args = parser.parse_args()

    with ChatServer(default=judge_answer, check=check_judge_request, latency=args.latency) as server:
        serial_s, serial_failed, _ = run(
            judge_for(server, 1, None), pairs(args.baseline_pairs, args.size, 10**6), args.batch
        )
        serial_rate = args.baseline_pairs / serial_s
        with tempfile.TemporaryDirectory() as cache:
            requests = pairs(args.pairs, args.size)
            seconds, failed, sent = run(judge_for(server, args.concurrency, cache), requests, args.batch)
            rate = args.pairs / seconds
            ideal = args.concurrency / args.latency
            rerun_s, rerun_failed, rerun_sent = run(
                judge_for(server, args.concurrency, cache), requests, args.batch
            )
        problems = len(server.problems)
        most = server.most_in_flight

    latency_ms = args.latency * 1000
    print(f"judge bench: {args.pairs} pairs, {latency_ms:.0f} ms per answer, {args.concurrency} in flight")
    print(f"  baseline (1 in flight, {args.baseline_pairs} pairs): {serial_rate:.2f} pairs/s")
    print(f"  concurrent: {rate:.1f} pairs/s in {seconds:.2f} s; ideal {ideal:.1f} pairs/s")
    print(f"  ratio to ideal: {rate / ideal:.3f} (goal >= 0.8)")
    print(f"  speed-up over the baseline: {rate / serial_rate:.1f}x")
    print(f"  most requests in flight at the server: {most} (bound {args.concurrency})")
    print(f"  rerun from the cache: {rerun_sent} requests (goal 0), {args.pairs / rerun_s:.0f} pairs/s")
    failures = serial_failed + failed + rerun_failed
    print(f"  failed judgements: {failures}; malformed requests: {problems}; requests sent: {sent}")
    ok = (
        rate / ideal >= 0.8
        and rerun_sent == 0
        and not (failed or rerun_failed or problems)
        and most <= args.concurrency
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
