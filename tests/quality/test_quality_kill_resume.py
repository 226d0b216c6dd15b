"""SIGKILL a score run and a filter run (``ieiw score``, ``ieiw filter``) at a random point; readers never
see a duplicate key or an uncommitted batch, and the rerun gives exactly what an uninterrupted run gives,
bit for bit: every model call runs at a fixed batch shape, so a score never depends on which images the
embedding cache left to embed together. Each test draws its seed and names it in every assertion."""

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
from quality_helpers import make_sample, picture, quality_stages, run_plain, write_candidates

from ieiw.quality.config import QualityConfig
from ieiw.quality.filtering import FilterStage
from ieiw.quality.scoring import ScoreStage, read_scores
from ieiw.storage import manifest
from ieiw.storage.layout import BuildLayout
from ieiw.storage.schema import Task
from ieiw.storage.shards import iter_samples, iter_tar_groups
from ieiw.storage.stage_folder import read_listing

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


def _kill_after(process: subprocess.Popen, parts: Path, rng: random.Random, seed: int) -> int:
    """SIGKILL ``process`` once a random number of batches committed, plus a random moment more."""
    wanted = rng.randint(1, SHARDS - 6)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if parts.exists() and len([p for p in parts.iterdir() if p.suffix == ".parquet"]) >= wanted:
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.05))
    assert process.poll() is None, (
        f"seed {seed}: the run finished before it could be killed: " + process.stdout.read().decode()
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return wanted


def _rerun(args, config, tmp_path, api, seed: int) -> None:
    rerun = _run(args, config, tmp_path, api)
    output = rerun.communicate(timeout=400)[0].decode()
    assert rerun.returncode == 0, f"seed {seed}: {output}"


def _no_leftovers(stage: Path, seed: int) -> None:
    assert [p.name for p in stage.rglob("*") if ".tmp-" in p.name] == [], f"seed {seed}"
    assert not (stage / ".lease.json").exists(), f"seed {seed}"


def _committed_shards(scores_url: str) -> list[str]:
    """The candidate shards (record ids) of the score stage's committed batches."""
    listing = read_listing(scores_url).to_pandas()
    committed = manifest.completed_batches(scores_url)
    return sorted(listing.loc[listing["batch"].isin(committed), "record_id"])


def test_score_killed_at_a_random_point_then_rerun(
    tmp_path, embedder_config, aesthetic_checkpoint, prefect_api
):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")  # shown with -s, and with the output of a failure
    rng = random.Random(seed)
    stage = str(tmp_path / "candidates")
    _candidates(stage)
    config = _quality(embedder_config, aesthetic_checkpoint)
    layout = BuildLayout.of_stage(stage)
    scores_url = layout.scores("candidates")

    process = _run(["score", stage], config, tmp_path, prefect_api)
    _kill_after(process, Path(scores_url, "manifest"), rng, seed)
    seen = read_scores(scores_url)
    committed = _committed_shards(scores_url)
    assert 0 < len(committed) < SHARDS, f"seed {seed}: the kill did not land mid-way"
    assert seen["key"].is_unique, f"seed {seed}"
    assert sorted(set(seen["shard"])) == committed, f"seed {seed}"
    assert len(seen) == 2 * len(committed), f"seed {seed}"

    _rerun(["score", stage], config, tmp_path, prefect_api, seed)
    scores = read_scores(scores_url).sort_values("key").reset_index(drop=True)
    assert len(scores) == 2 * SHARDS and scores["key"].is_unique, f"seed {seed}"
    _no_leftovers(Path(scores_url), seed)

    # An uninterrupted run with a cache of its own (nothing embedded before): the same bytes exactly.
    quality = QualityConfig.model_validate(config)
    alone = quality.model_copy(
        update={"scoring": quality.scoring.model_copy(update={"cache_url": str(tmp_path / "cold-cache")})}
    )
    whole = str(tmp_path / "uninterrupted")
    run_plain(ScoreStage(alone, stage, whole, layout), workers=2)
    expected = read_scores(whole).sort_values("key").reset_index(drop=True)
    try:
        pd.testing.assert_frame_equal(scores, expected, check_exact=True)
    except AssertionError as error:
        raise AssertionError(
            f"seed {seed}: the resumed scores differ from an uninterrupted run: {error}"
        ) from None


def test_filter_killed_at_a_random_point_then_rerun(
    tmp_path, embedder_config, aesthetic_checkpoint, prefect_api
):
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")  # shown with -s, and with the output of a failure
    rng = random.Random(seed)
    stage = str(tmp_path / "candidates")
    _candidates(stage)
    score, _ = quality_stages(
        stage, QualityConfig.model_validate(_quality(embedder_config, aesthetic_checkpoint))
    )
    run_plain(score, workers=2)
    scores = read_scores(score.url)
    config = _quality(embedder_config, aesthetic_checkpoint, float(scores["aesthetic_src"].median()))
    out = tmp_path / "final"

    process = _run(["filter", stage, str(out)], config, tmp_path, prefect_api)
    _kill_after(process, out / "manifest", rng, seed)
    seen = manifest.read_manifest(str(out))
    assert 0 < len(manifest.completed_batches(str(out))) < SHARDS, f"seed {seed}: not killed mid-way"
    assert seen["key"].is_unique, f"seed {seed}"
    visible = manifest.reader_shards(str(out))
    assert sorted(Path(s).name for s in visible) == sorted(seen["shard"].dropna()), f"seed {seed}"
    assert sorted(s.key for s in iter_samples(str(out))) == sorted(seen.loc[seen["kept"], "key"]), (
        f"seed {seed}"
    )

    _rerun(["filter", stage, str(out)], config, tmp_path, prefect_api, seed)
    final = manifest.read_manifest(str(out)).sort_values("key").reset_index(drop=True)
    assert len(final) == 2 * SHARDS and final["key"].is_unique, f"seed {seed}"
    assert (final["drop_reason"] == "duplicate").sum() == SHARDS // 4, f"seed {seed}"
    on_disk = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert on_disk == sorted(final["shard"].dropna()), f"seed {seed}"  # what the killed run left is gone
    _no_leftovers(out, seed)

    whole = tmp_path / "uninterrupted"
    layout = BuildLayout.of_stage(stage)
    quality = QualityConfig.model_validate(config)
    run_plain(FilterStage(quality, stage, score.url, str(whole), str(tmp_path / "report"), layout), workers=2)
    expected = manifest.read_manifest(str(whole)).sort_values("key").reset_index(drop=True)
    try:
        pd.testing.assert_frame_equal(final, expected, check_exact=True)
    except AssertionError as error:
        raise AssertionError(
            f"seed {seed}: the resumed filter differs from an uninterrupted run: {error}"
        ) from None
    members = {k: m for s in manifest.committed_shards(str(out)) for k, m in iter_tar_groups(s)}
    again = {k: m for s in manifest.committed_shards(str(whole)) for k, m in iter_tar_groups(s)}
    assert members == again and len(members) == int(final["kept"].sum()), f"seed {seed}"
