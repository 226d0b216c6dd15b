"""The ``score`` and ``filter`` Prefect flows end to end on a real Prefect server, and the CLI: artifacts,
fingerprints that refuse a changed setting or model, rebuilds, input that grew, the lease."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from quality_helpers import TINY_CLIP, candidate_samples, make_sample, picture, write_candidates
from typer.testing import CliRunner

from ieiw.quality.config import default_scores_url
from ieiw.quality.scoring import read_scores
from ieiw.storage import manifest
from ieiw.storage.lease import StageBusy, StageLease
from ieiw.storage.schema import Task
from ieiw.storage.stage_folder import StageChanged, read_record


def quality_config(embedder_config, aesthetic_checkpoint=None, threshold=None, **scoring) -> dict:
    return {
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


def test_score_and_filter_flows_with_artifacts(
    tmp_path, candidates, embedder_config, aesthetic_checkpoint, prefect_api
):
    from prefect.client.orchestration import get_client

    from ieiw.flows.filter import filter_flow
    from ieiw.flows.score import score_flow

    config = quality_config(embedder_config, aesthetic_checkpoint, threshold=-1e9)
    scored = score_flow(candidates["url"], config=config, shards_per_wave=2)
    assert scored["samples"] == candidates["total"] == 14 and scored["scored_now"] == 3
    assert scored["errors"] == {"corrupt_image": 1, "corrupt_json": 1}
    assert score_flow(candidates["url"], config=config)["scored_now"] == 0
    record = read_record(default_scores_url(candidates["url"]))
    assert [r["scored"] for r in record["runs"]] == [3, 0] and record["runs"][0]["device"]
    assert record["info"]["models"]["aesthetic_checkpoint"] == aesthetic_checkpoint
    assert record["fingerprint"]["models"]["embedder.pretrained"].startswith("sha256:")

    out = str(tmp_path / "final")
    result = filter_flow(candidates["url"], out, config=config, shards_per_wave=2)
    assert result["candidates"] == 14 and result["batches"] == 3 and result["batches_skipped"] == 0
    # everything passes the bounds; pair 1 repeats pair 0 and both broken samples drop
    assert result["kept"] == 11
    assert result["dropped"] == {"duplicate": 1, "corrupt_image": 1, "corrupt_json": 1}
    assert Path(result["report"]["index_html"]).is_file()
    assert Path(out, "manifest.parquet").is_file() and len(list(Path(out, "manifest").glob("*.parquet"))) == 3
    again = filter_flow(candidates["url"], out, config=config)
    assert again["batches_skipped"] == 3 and again["kept"] == 11 and not again["rebuilt"]

    import anyio

    async def artifact_keys() -> set[str]:
        async with get_client() as client:
            return {a.key for a in await client.read_artifacts()}

    keys = anyio.run(artifact_keys)
    assert {
        "quality-score-means",
        "quality-filter-outcomes",
        "quality-filter-histograms",
        "quality-dropped-html",
    } <= keys


def test_a_changed_threshold_is_refused_then_rebuilt_exactly(
    tmp_path, candidates, embedder_config, aesthetic_checkpoint, prefect_api
):
    from ieiw.flows.filter import filter_flow
    from ieiw.flows.score import score_flow

    score_flow(candidates["url"], config=quality_config(embedder_config, aesthetic_checkpoint))
    scores = read_scores(default_scores_url(candidates["url"]))
    ok = scores[scores["error"].isna()]
    low, high = (float(v) for v in np.sort(ok["aesthetic_src"].to_numpy())[[2, 8]])
    samples = candidates["samples"]
    duplicate = max(samples[0].key, samples[1].key)  # pair 1 repeats pair 0: the later key is dropped
    out = str(tmp_path / "final")
    first = filter_flow(
        candidates["url"], out, config=quality_config(embedder_config, aesthetic_checkpoint, low)
    )
    kept_low = set(ok.loc[ok["aesthetic_src"] >= low, "key"]) - {duplicate}
    assert first["kept"] == len(kept_low) and set(_final_keys(out)) == kept_low
    with pytest.raises(StageChanged) as refused:
        filter_flow(
            candidates["url"], out, config=quality_config(embedder_config, aesthetic_checkpoint, high)
        )
    assert f"filter.policy.default.aesthetic_src_min: {low} -> {high}" in str(refused.value)
    assert set(_final_keys(out)) == kept_low  # nothing changed

    rebuilt = filter_flow(
        candidates["url"],
        out,
        config=quality_config(embedder_config, aesthetic_checkpoint, high),
        rebuild="yes",
    )
    assert rebuilt["rebuilt"]
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


def test_a_changed_checkpoint_at_the_same_path_is_refused(
    tmp_path, candidates, clip_files, embedder_config, prefect_api
):
    """Same path, other content: score names the embedder's identity and does nothing; a rebuild scores
    with the new model and never reuses the old model's vectors (they stay in the shared cache)."""
    import open_clip

    from ieiw.flows.score import score_flow
    from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig

    checkpoint = tmp_path / "models" / "clip.pt"
    checkpoint.parent.mkdir()
    shutil.copy(clip_files["pt"], checkpoint)
    embedder = embedder_config.model_copy(update={"pretrained": str(checkpoint)})
    shared = str(tmp_path / "shared-cache")
    config = quality_config(embedder, cache_url=shared)
    score_flow(candidates["url"], config=config)
    scores_url = default_scores_url(candidates["url"])
    before = read_scores(scores_url).set_index("key")

    torch.manual_seed(7)
    torch.save(open_clip.create_model(TINY_CLIP).state_dict(), checkpoint)  # same path, same size
    with pytest.raises(StageChanged) as refused:
        score_flow(candidates["url"], config=config)
    message = str(refused.value)
    assert "score.embedder.pretrained: sha256 " in message and " -> sha256 " in message
    assert read_scores(scores_url).set_index("key").equals(before)

    rebuilt = score_flow(candidates["url"], config=config, rebuild="yes")
    assert rebuilt["rebuilt"] and rebuilt["scored_now"] == 3
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
    from ieiw.flows.filter import filter_flow
    from ieiw.flows.score import score_flow

    stage = str(tmp_path / "candidates")
    samples = candidate_samples()
    write_candidates(stage, {"gen-a": samples[2:7]})
    policy = {"default": {}, "tasks": {}, "duplicates": {"clip_min_cosine": None}}
    config = {**quality_config(embedder_config), "policy": policy}
    out = str(tmp_path / "final")
    score_flow(stage, config=config)
    assert filter_flow(stage, out, config=config)["kept"] == 5
    # pair 0 (and its duplicate, pair 1) arrive in a later batch of the same generator
    write_candidates(stage, {"gen-b": [samples[0], samples[1]]})
    assert score_flow(stage, config=config)["scored_now"] == 1
    with caplog.at_level(logging.WARNING):
        grown = filter_flow(stage, out, config=config)
    assert "its input changed since it was computed (candidate shards 1 -> 2" in caplog.text
    assert grown["rebuilt"] and grown["candidates"] == 7 and grown["kept"] == 6
    assert grown["dropped"] == {"duplicate": 1}
    record = read_record(out)
    assert record["info"]["input"]["candidate_shards"] == 2 and record["info"]["input"]["score_batches"] == 2
    assert len(record["runs"]) == 1  # the earlier run's output is gone, and so is its record


def test_only_the_lease_holder_cleans_the_stage(tmp_path, candidates, embedder_config, prefect_api):
    from ieiw.flows.score import score_flow

    config = quality_config(embedder_config)
    scores_url = default_scores_url(candidates["url"])
    score_flow(candidates["url"], config=config)
    cache = next(Path(scores_url, "embeddings").iterdir())
    leftover = cache / ".part-0123.npy.tmp-deadbeef"
    orphan = cache / "part-0123456789abcdef.npy"
    leftover.write_bytes(b"half")
    orphan.write_bytes(b"vectors without keys")
    write_candidates(candidates["url"], {"gen-c": [make_sample(90, Task.REMOVE, picture(90), picture(91))]})
    with StageLease(scores_url, "score"):  # another run writes the scores stage right now
        with pytest.raises(StageBusy, match="being written by another run"):
            score_flow(candidates["url"], config=config)
        assert leftover.exists() and orphan.exists()
    result = score_flow(candidates["url"], config=config)
    assert result["scored_now"] == 1 and result["samples"] == 15
    assert not leftover.exists() and not orphan.exists()


def test_cli_score_filter_and_report(tmp_path, candidates, embedder_config, prefect_api):
    from ieiw.flows.commands.quality import register

    app = typer.Typer()
    register(app)
    config = tmp_path / "build.yaml"
    config.write_text(
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
    result = runner.invoke(
        app, ["filter", candidates["url"], str(tmp_path / "final"), "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["candidates"] == candidates["total"]
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
