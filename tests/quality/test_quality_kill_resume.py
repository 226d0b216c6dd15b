"""SIGKILL a score run and a filter run at a random point; readers never see a duplicate key or an
uncommitted batch, and the rerun gives exactly what an uninterrupted run gives."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from quality_helpers import make_sample, picture, write_candidates

from ieiw.quality.config import default_scores_url
from ieiw.quality.scoring import read_scores
from ieiw.storage import manifest
from ieiw.storage.schema import Task
from ieiw.storage.shards import iter_samples, iter_tar_groups

SHARDS = 24


def _candidates(stage: str) -> None:
    """24 committed shards of 2 pairs; every 4th shard repeats the previous shard's first pair."""
    tasks = [Task.REMOVE, Task.ADD, Task.ENHANCEMENT]
    batches = {}
    for b in range(SHARDS):
        pairs = []
        for j in range(2):
            n = 2 * b + j
            seed = 2 * (b - 1) if b % 4 == 3 and j == 0 else n  # a duplicate of an earlier shard's pair
            pairs.append(make_sample(n, tasks[n % 3], picture(100 + seed), picture(300 + seed)))
        batches[f"gen-{b:02d}"] = pairs
    write_candidates(stage, batches)


def _quality(embedder_config, aesthetic_checkpoint, threshold: float | None = None) -> dict:
    return {
        "scoring": {
            "embedder": embedder_config.model_dump(),
            "aesthetic_checkpoint": aesthetic_checkpoint,
            "batch_size": 2,
        },
        "policy": {
            "default": {"aesthetic_src_min": threshold},
            "tasks": {},
            "duplicates": {"clip_min_cosine": None},
        },
        "shard": {"max_samples": 1},
    }


def _run(args: list[str], config: dict, tmp_path: Path, api: str) -> subprocess.Popen:
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump({"quality": config}))
    env = {**os.environ, "PREFECT_API_URL": api, "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "ieiw.flows.cli", *args, "--config", str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=str(tmp_path),
    )


def _kill_after(process: subprocess.Popen, parts: Path, rng: random.Random) -> int:
    """SIGKILL ``process`` once a random number of batches committed, plus a random moment more."""
    wanted = rng.randint(1, SHARDS - 6)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if parts.exists() and len([p for p in parts.iterdir() if p.suffix == ".parquet"]) >= wanted:
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.05))
    assert process.poll() is None, (
        "the run finished before it could be killed: " + process.stdout.read().decode()
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return wanted


def _rerun(args, config, tmp_path, api) -> None:
    rerun = _run(args, config, tmp_path, api)
    output = rerun.communicate(timeout=400)[0].decode()
    assert rerun.returncode == 0, output


def _no_leftovers(stage: Path) -> None:
    assert [p.name for p in stage.rglob("*") if ".tmp-" in p.name] == []
    assert not (stage / ".lease.json").exists()


def test_score_killed_at_a_random_point_then_rerun(
    tmp_path, embedder_config, aesthetic_checkpoint, prefect_api
):
    from ieiw.flows.score import score_flow

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    stage = str(tmp_path / "candidates")
    _candidates(stage)
    config = _quality(embedder_config, aesthetic_checkpoint)
    scores_url = default_scores_url(stage)

    process = _run(["score", stage], config, tmp_path, prefect_api)
    _kill_after(process, Path(scores_url, "manifest"), rng)
    seen = read_scores(scores_url)
    committed = manifest.completed_batches(scores_url)
    assert 0 < len(committed) < SHARDS, f"seed {seed}: the kill did not land mid-way"
    assert seen["key"].is_unique, f"seed {seed}"
    assert sorted({f"score-{s[: -len('.tar')]}" for s in seen["shard"]}) == sorted(committed)
    assert len(seen) == 2 * len(committed)

    _rerun(["score", stage], config, tmp_path, prefect_api)
    scores = read_scores(scores_url).sort_values("key").reset_index(drop=True)
    assert len(scores) == 2 * SHARDS and scores["key"].is_unique
    _no_leftovers(Path(scores_url))

    whole = str(tmp_path / "uninterrupted")
    score_flow(stage, scores_url=whole, config=config)
    expected = read_scores(whole).sort_values("key").reset_index(drop=True)
    pd.testing.assert_frame_equal(scores, expected, check_exact=True)


def test_filter_killed_at_a_random_point_then_rerun(
    tmp_path, embedder_config, aesthetic_checkpoint, prefect_api
):
    from ieiw.flows.filter import filter_flow
    from ieiw.flows.score import score_flow

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    stage = str(tmp_path / "candidates")
    _candidates(stage)
    score_flow(stage, config=_quality(embedder_config, aesthetic_checkpoint))
    scores = read_scores(default_scores_url(stage))
    config = _quality(embedder_config, aesthetic_checkpoint, float(scores["aesthetic_src"].median()))
    out = tmp_path / "final"

    process = _run(["filter", stage, str(out)], config, tmp_path, prefect_api)
    _kill_after(process, out / "manifest", rng)
    seen = manifest.read_manifest(str(out))
    assert 0 < len(manifest.completed_batches(str(out))) < SHARDS, f"seed {seed}: not killed mid-way"
    assert seen["key"].is_unique, f"seed {seed}"
    visible = manifest.reader_shards(str(out))
    assert sorted(Path(s).name for s in visible) == sorted(seen["shard"].dropna())
    assert sorted(s.key for s in iter_samples(str(out))) == sorted(seen.loc[seen["kept"], "key"])

    _rerun(["filter", stage, str(out)], config, tmp_path, prefect_api)
    final = manifest.read_manifest(str(out)).sort_values("key").reset_index(drop=True)
    assert len(final) == 2 * SHARDS and final["key"].is_unique
    assert (final["drop_reason"] == "duplicate").sum() == SHARDS // 4
    on_disk = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert on_disk == sorted(final["shard"].dropna())  # what the killed run left was removed
    _no_leftovers(out)

    whole = tmp_path / "uninterrupted"
    filter_flow(stage, str(whole), config=config)
    expected = manifest.read_manifest(str(whole)).sort_values("key").reset_index(drop=True)
    pd.testing.assert_frame_equal(final, expected, check_exact=True)
    members = {k: m for s in manifest.committed_shards(str(out)) for k, m in iter_tar_groups(s)}
    again = {k: m for s in manifest.committed_shards(str(whole)) for k, m in iter_tar_groups(s)}
    assert members == again and len(members) == int(final["kept"].sum())
