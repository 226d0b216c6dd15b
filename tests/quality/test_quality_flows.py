"""The ``score`` and ``filter`` stages as Prefect flow runs on a real Prefect server, and the CLI:
artifacts, fingerprints that refuse a changed setting or model, rebuilds that keep the caches, input
that grew, the lease, and the same bytes on a two-process Dask cluster as on threads."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
import yaml
from quality_helpers import (
    TINY_CLIP,
    candidate_samples,
    make_sample,
    picture,
    quality_stages,
    write_candidates,
)
from typer.testing import CliRunner

from ieiw.flows.commands.quality import register, run_quality_stage
from ieiw.flows.config import RunnerConfig
from ieiw.quality.config import QualityConfig
from ieiw.quality.scoring import read_scores
from ieiw.storage import manifest
from ieiw.storage.layout import BuildLayout
from ieiw.storage.lease import StageBusy, StageLease
from ieiw.storage.schema import Task
from ieiw.storage.shards import iter_tar_groups
from ieiw.storage.stage_folder import StageChanged, read_record


def quality_config(embedder_config, aesthetic_checkpoint=None, threshold=None, **scoring) -> QualityConfig:
    return QualityConfig.model_validate(
        {
            "scoring": {
                "embedder": embedder_config.model_dump(),
                "aesthetic_checkpoint": aesthetic_checkpoint,
                "batch_size": 4,
                **scoring,
            },
            "policy": {
                "default": {"aesthetic_src_min": threshold},
                "tasks": {},
                "duplicates": {"clip_min_cosine": 0.9999},
            },
        }
    )


def run(stage, rebuild: bool = False, runner: RunnerConfig | None = None):
    """A stage as the CLI runs it: its own flow run, then its artifacts."""
    return run_quality_stage(stage, runner or RunnerConfig(), rebuild)


def test_score_and_filter_flows_with_artifacts(
    tmp_path, candidates, embedder_config, aesthetic_checkpoint, prefect_api
):
    from prefect.client.orchestration import get_client

    config = quality_config(embedder_config, aesthetic_checkpoint, threshold=-1e9)
    out = str(tmp_path / "final")
    score, filtering = quality_stages(candidates["url"], config, out)
    assert (score.name, filtering.name) == ("score candidates", "filter candidates")
    scored = run(score)
    assert scored.rows == candidates["total"] == 14 and scored.records == 3 and scored.batches == 3
    assert scored.counts == {"corrupt_image": 1, "corrupt_json": 1}
    assert scored.extra["samples"] == 14 and scored.extra["errors"] == {"corrupt_image": 1, "corrupt_json": 1}
    assert "14 rows from 3 records (corrupt_image 1, corrupt_json 1)" in scored.outcome()
    again = run(score)
    assert again.skipped and again.records == 0 and again.records_committed_before == 3
    record = read_record(score.url)
    assert len(record["runs"]) == 1 and record["runs"][0]["device"]  # the rerun started no run at all
    assert record["info"]["models"]["aesthetic_checkpoint"] == aesthetic_checkpoint
    assert record["fingerprint"]["models"]["embedder.pretrained"].startswith("sha256:")
    assert (
        record["fingerprint"]["upstream"]["candidates"]
        == read_record(candidates["url"])["fingerprint"]["digest"]
    )

    result = run(filtering)
    assert result.records == 3 and result.batches == 3
    # everything passes the bounds; pair 1 repeats pair 0 and both broken samples drop
    assert result.kept == 11
    assert result.dropped == {"duplicate": 1, "corrupt_image": 1, "corrupt_json": 1}
    assert Path(result.extra["report"]["index_html"]).is_file()
    assert result.extra["report_url"] == BuildLayout.of_stage(candidates["url"]).report("candidates")
    assert Path(out, "manifest.parquet").is_file() and len(list(Path(out, "manifest").glob("*.parquet"))) == 3
    again = run(filtering)
    assert again.skipped and again.kept == 0 and not again.rebuilt

    import anyio

    wanted = {
        "score-candidates-means",
        "score-candidates-histograms",
        "filter-candidates-outcomes",
        "filter-candidates-histograms",
        "filter-candidates-dropped-html",
    }

    async def artifact_keys() -> set[str]:  # asked by key: the server holds every other test's too
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(wanted)))
            )
            return {a.key for a in found}

    keys = anyio.run(artifact_keys)
    assert wanted <= keys


def test_a_changed_threshold_is_refused_then_rebuilt_exactly(
    tmp_path, candidates, embedder_config, aesthetic_checkpoint, prefect_api
):
    out = str(tmp_path / "final")

    def stages(threshold=None):
        return quality_stages(
            candidates["url"], quality_config(embedder_config, aesthetic_checkpoint, threshold), out
        )

    score, _ = stages()
    run(score)
    scores = read_scores(score.url)
    ok = scores[scores["error"].isna()]
    low, high = (float(v) for v in np.sort(ok["aesthetic_src"].to_numpy())[[2, 8]])
    samples = candidates["samples"]
    duplicate = max(samples[0].key, samples[1].key)  # pair 1 repeats pair 0: the later key is dropped
    first = run(stages(low)[1])
    kept_low = set(ok.loc[ok["aesthetic_src"] >= low, "key"]) - {duplicate}
    assert first.kept == len(kept_low) and set(_final_keys(out)) == kept_low
    with pytest.raises(StageChanged) as refused:
        run(stages(high)[1])
    assert f"filter.policy.default.aesthetic_src_min: {low} -> {high}" in str(refused.value)
    assert "--rebuild filter" in str(refused.value)
    assert set(_final_keys(out)) == kept_low  # nothing changed

    rebuilt = run(stages(high)[1], rebuild=True)
    assert rebuilt.rebuilt
    expected = set(ok.loc[ok["aesthetic_src"] >= high, "key"]) - {duplicate}
    final = manifest.read_manifest(out)
    assert len(final) == 14 and final["key"].is_unique
    assert set(final.loc[final["kept"], "key"]) == expected
    assert {s.key for s in _final_samples(out)} == expected
    below = final[final["drop_reason"] == "aesthetic_src_below_min"]
    assert set(below["key"]) == set(ok.loc[ok["aesthetic_src"] < high, "key"]) - {duplicate}


def _final_samples(out: str):
    from ieiw.storage.shards import iter_samples

    return list(iter_samples(out))


def _final_keys(out: str) -> list[str]:
    final = manifest.read_manifest(out)
    return final.loc[final["kept"], "key"].tolist()


def test_the_filter_refuses_scores_of_another_scoring_config(
    tmp_path, candidates, embedder_config, aesthetic_checkpoint, prefect_api
):
    """Scores made without the aesthetic head are not this config's: the filter stops before it opens."""
    score, _ = quality_stages(candidates["url"], quality_config(embedder_config))
    run(score)
    out = tmp_path / "final"
    _, filtering = quality_stages(
        candidates["url"], quality_config(embedder_config, aesthetic_checkpoint), str(out)
    )
    with pytest.raises(StageChanged) as refused:
        run(filtering)
    assert "score.aesthetic_checkpoint: none -> sha256 " in str(refused.value)
    assert "--rebuild score" in str(refused.value)
    assert not out.exists()  # nothing was opened


def test_a_changed_checkpoint_at_the_same_path_is_refused(
    tmp_path, candidates, clip_files, embedder_config, prefect_api
):
    """Same path, other content: score names the embedder's identity and does nothing; a rebuild scores
    with the new model and never reuses the old model's vectors (they stay in the shared cache)."""
    import open_clip

    from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig

    checkpoint = tmp_path / "models" / "clip.pt"
    checkpoint.parent.mkdir()
    shutil.copy(clip_files["pt"], checkpoint)
    embedder = embedder_config.model_copy(update={"pretrained": str(checkpoint)})
    shared = str(tmp_path / "shared-cache")
    config = quality_config(embedder, cache_url=shared)
    run(quality_stages(candidates["url"], config)[0])
    scores_url = quality_stages(candidates["url"], config)[0].url
    before = read_scores(scores_url).set_index("key")

    torch.manual_seed(7)
    torch.save(open_clip.create_model(TINY_CLIP).state_dict(), checkpoint)  # same path, same size
    with pytest.raises(StageChanged) as refused:
        run(quality_stages(candidates["url"], config)[0])
    message = str(refused.value)
    assert "score.embedder.pretrained: sha256 " in message and " -> sha256 " in message
    assert read_scores(scores_url).set_index("key").equals(before)

    rebuilt = run(quality_stages(candidates["url"], config)[0], rebuild=True)
    assert rebuilt.rebuilt and rebuilt.records == 3
    after = read_scores(scores_url).set_index("key")
    new_embedder = ClipEmbedder.from_config(EmbedderConfig.model_validate(embedder.model_dump()))
    sample = candidate_samples()[4]
    src, tgt = new_embedder.embed_images([sample.source, sample.target])
    assert after.loc[sample.key, "clip_img_sim"] == pytest.approx(float(src @ tgt), abs=1e-5)
    assert after.loc[sample.key, "clip_img_sim"] != pytest.approx(before.loc[sample.key, "clip_img_sim"])
    assert len([p for p in Path(shared).iterdir() if p.is_dir()]) == 2  # one namespace per model


def test_more_committed_input_rebuilds_the_filter(tmp_path, embedder_config, prefect_api, caplog):
    """Candidates grow (a generator resumed): score adds the new batch, and the filter, whose duplicate
    flags depend on the whole input, is rebuilt over all of it with a warning instead of refusing."""
    stage = str(tmp_path / "candidates")
    samples = candidate_samples()
    write_candidates(stage, {"gen-a": samples[2:7]})
    policy = {"default": {}, "tasks": {}, "duplicates": {"clip_min_cosine": None}}
    config = QualityConfig.model_validate(
        {**quality_config(embedder_config).model_dump(mode="json"), "policy": policy}
    )
    out = str(tmp_path / "final")
    score, filtering = quality_stages(stage, config, out)
    run(score)
    assert run(filtering).kept == 5
    # pair 0 (and its duplicate, pair 1) arrive in a later batch of the same generator
    write_candidates(stage, {"gen-b": [samples[0], samples[1]]})
    score, filtering = quality_stages(stage, config, out)
    rescored = run(score)
    assert rescored.records == 1 and rescored.records_committed_before == 1
    with caplog.at_level(logging.WARNING):
        grown = run(filtering)
    assert "filter candidates: its input changed since it was made" in caplog.text
    assert grown.rebuilt and grown.records == 2 and grown.kept == 6
    assert grown.dropped == {"duplicate": 1}
    record = read_record(out)
    assert record["info"]["input"] == filtering.input_key()
    assert len(record["runs"]) == 1  # the earlier run's output is gone, and so is its record


def test_only_the_lease_holder_cleans_the_stage(tmp_path, candidates, embedder_config, prefect_api):
    """A run that finds the stage held stops and touches nothing; the holder's next run cleans what a
    killed run left in the stage. The embedding cache is no stage's: no run cleans it."""
    config = quality_config(embedder_config)
    score, _ = quality_stages(candidates["url"], config)
    run(score)
    leftover = Path(score.url, "manifest", ".score-0123.parquet.tmp-deadbeef")
    leftover.write_bytes(b"half")
    cache = next(Path(BuildLayout.of_stage(candidates["url"]).embeddings).iterdir())
    orphan = cache / "part-0123456789abcdef.npy"
    orphan.write_bytes(b"vectors without keys")
    write_candidates(candidates["url"], {"gen-c": [make_sample(90, Task.REMOVE, picture(90), picture(91))]})
    with StageLease(score.url, "score"):  # another run writes the scores stage right now
        with pytest.raises(StageBusy, match="being written by another run"):
            run(quality_stages(candidates["url"], config)[0])
        assert leftover.exists()
    result = run(quality_stages(candidates["url"], config)[0])
    assert result.records == 1 and result.rows == 1 and len(read_scores(score.url)) == 15
    assert not leftover.exists() and orphan.exists()


def test_score_and_filter_on_a_dask_cluster_match_threads(
    tmp_path, embedder_config, aesthetic_checkpoint, prefect_api
):
    """The same candidates in two builds: one scored and filtered on threads, the other on a local Dask
    cluster of two worker processes (each with its own models and a cold cache of its own): the scores
    tables are equal exactly and the final shards are the same files, byte for byte."""
    from ieiw.flows.runners import build_task_runner
    from ieiw.flows.stage_flow import run_stage_flow

    samples = candidate_samples()
    config = quality_config(embedder_config, aesthetic_checkpoint, threshold=-1e9)
    threads = RunnerConfig(task_runner="threads", max_workers=2)
    dask = RunnerConfig(task_runner="dask", max_workers=2, gpus="none")
    made = {}
    for name, runner in (("threads", threads), ("dask", dask)):
        stage = str(tmp_path / name / "candidates")
        write_candidates(stage, {f"gen-{i}": samples[2 * i : 2 * i + 2] for i in range(6)})
        score, filtering = quality_stages(stage, config)
        with build_task_runner(runner) as task_runner:  # one cluster for both stages, as a build
            for each in (score, filtering):
                summary = run_stage_flow(each, runner, task_runner=task_runner)
                assert summary.records == 6, (name, each.name, summary)
        made[name] = (score.url, filtering.url)
    assert read_record(made["dask"][0])["runs"][0]["device"] == "cpu"
    scores = {n: read_scores(u[0]).sort_values("key").reset_index(drop=True) for n, u in made.items()}
    pd.testing.assert_frame_equal(scores["threads"], scores["dask"], check_exact=True)
    assert len(scores["dask"]) == 12 and scores["dask"]["aesthetic_src"].notna().all()
    # the same shard files holding the same members, byte for byte (a tar header's time is the write's)
    files = {
        n: {Path(s).name: list(_members(s)) for s in manifest.committed_shards(u[1])} for n, u in made.items()
    }
    assert len(files["dask"]) == 6 and files["threads"] == files["dask"]
    kept = [k for s in manifest.committed_shards(made["dask"][1]) for k, _ in iter_tar_groups(s)]
    assert len(kept) == 11  # pair 1 repeats pair 0


def _members(shard: str):
    """A shard's members in order: name and bytes."""
    import tarfile

    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            yield info.name, tar.extractfile(info).read()


def test_cli_score_filter_rebuild_and_report(tmp_path, candidates, embedder_config, prefect_api):
    app = typer.Typer()
    register(app)
    config = tmp_path / "build.yaml"
    config.write_text(  # a build config with only a quality section: no output needed
        yaml.safe_dump(
            {
                "quality": {
                    "scoring": {"embedder": embedder_config.model_dump()},
                    "policy": {
                        "default": {"clip_img_sim_min": 0.0},
                        "tasks": {},
                        "duplicates": {"clip_min_cosine": None},
                    },
                }
            }
        )
    )
    runner = CliRunner()
    result = runner.invoke(app, ["score", candidates["url"], "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "score candidates: 14 rows from 3 records (corrupt_image 1, corrupt_json 1)" in result.output
    layout = BuildLayout.of_stage(candidates["url"])
    scores = read_scores(layout.scores("candidates")).sort_values("key").reset_index(drop=True)
    cache = sorted(p.relative_to(layout.embeddings) for p in Path(layout.embeddings).rglob("*"))
    assert any(p.suffix == ".npy" for p in cache)

    # --rebuild score wipes the scores stage and keeps the content-addressed cache: nothing is embedded
    result = runner.invoke(app, ["score", candidates["url"], "--config", str(config), "--rebuild"])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(layout.embeddings) for p in Path(layout.embeddings).rglob("*")) == cache
    rescored = read_scores(layout.scores("candidates")).sort_values("key").reset_index(drop=True)
    pd.testing.assert_frame_equal(rescored, scores, check_exact=True)
    assert len(read_record(layout.scores("candidates"))["runs"]) == 1

    result = runner.invoke(
        app, ["filter", candidates["url"], str(tmp_path / "final"), "--config", str(config), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["kept"] + sum(summary["dropped"].values()) == candidates["total"]
    assert summary["stage"] == "filter candidates" and summary["records"] == 3
    result = runner.invoke(
        app,
        [
            "quality-report",
            candidates["url"],
            str(tmp_path / "final"),
            "--config",
            str(config),
            "--out",
            str(tmp_path / "again"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "dropped.html").is_file()
