"""A whole build with a `quality:` section: generators, then score and filter, then the data card, which
describes what the stages recorded, never the config file as it is now."""

from __future__ import annotations

from pathlib import Path

import pytest

from ieiw.flows.build import ieiw_build
from ieiw.flows.config import BuildConfig
from ieiw.quality.config import default_scores_url
from ieiw.quality.scoring import read_scores
from ieiw.storage import manifest
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import StageChanged, read_record


def test_build_scores_filters_and_the_card_tells_what_was_made(
    prefect_api, phrasecut, embedder_config, aesthetic_checkpoint, tmp_path
):
    """Build with an open threshold, then at the median source aesthetic score: the filter refuses the
    changed threshold, rebuilds when told to and then keeps exactly the candidates at or above it; a
    later build with another config that rebuilds nothing leaves a card that still tells the truth."""
    annotations, images = phrasecut

    def config(threshold: float, dilation: int = 9) -> BuildConfig:
        return BuildConfig.model_validate(
            {
                "name": "scored",
                "output": str(tmp_path / "out"),
                "removal": {
                    "source": {"annotations": [annotations], "images": images},
                    "batch_size": 4,
                    "dilation": dilation,
                },
                "quality": {
                    "scoring": {
                        "embedder": embedder_config.model_dump(),
                        "aesthetic_checkpoint": aesthetic_checkpoint,
                        "batch_size": 8,
                    },
                    "policy": {
                        "default": {"aesthetic_src_min": threshold, "drop_duplicates": False},
                        "tasks": {},
                    },
                },
            }
        )

    first = ieiw_build(config(0.0))
    assert {"removal", "score removal", "filter removal"} <= set(first["stages"])
    scores = read_scores(default_scores_url(str(tmp_path / "out" / "removal")))
    assert len(scores) == 16 and scores["aesthetic_src"].nunique() > 2
    threshold = float(scores["aesthetic_src"].median())
    expected_kept = set(scores.loc[scores["aesthetic_src"] >= threshold, "key"])
    assert 0 < len(expected_kept) < 16

    with pytest.raises(StageChanged) as refused:
        ieiw_build(config(threshold))
    assert f"filter.policy.default.aesthetic_src_min: 0.0 -> {threshold}" in str(refused.value)

    result = ieiw_build(config(threshold), rebuild=["filter"])
    score = result["stages"]["score removal"]
    assert score["skipped"] and score["records"] == 0  # only the filter was rebuilt
    assert result["stages"]["filter removal"]["rebuilt"]
    final = tmp_path / "out" / "final" / "removal"
    frame = manifest.read_manifest(str(final))
    assert len(frame) == 16 and frame["key"].is_unique
    assert set(frame.loc[frame["kept"], "key"]) == expected_kept
    assert set(frame.loc[~frame["kept"], "drop_reason"]) == {"aesthetic_src_below_min"}
    kept = list(iter_samples(str(final)))
    assert {s.key for s in kept} == expected_kept
    assert all(s.meta.scores["aesthetic_src"] >= threshold for s in kept)

    card = Path(result["data_card"]).read_text()
    removed = sum(1 for s in kept if s.meta.task == "remove")
    assert f"| removal | remove | 8 | {removed} |" in card
    assert f"| removal | add | 8 | {len(kept) - removed} |" in card
    assert "## Score histograms" in card and "hist_aesthetic_src.png" in card
    assert list((tmp_path / "out" / "reports" / "removal").glob("hist_*.png"))
    for stage in ("removal", "score removal", "filter removal"):
        assert f"### {stage}\n" in card
    assert f"aesthetic_src_min: {threshold}" in card and "aesthetic_src_min: 0.0\n" not in card
    assert "dilation: 9" in card and "## Config" not in card
    aesthetic = read_record(default_scores_url(str(tmp_path / "out" / "removal")))["fingerprint"]["models"]
    assert f"| score removal | aesthetic_checkpoint | `{aesthetic['aesthetic_checkpoint']}` |" in card
    filter_runs = read_record(str(final))["runs"]
    assert len(filter_runs) == 1  # the rebuild started the record over
    assert "| filter removal | 0:00:" in card

    # The config file changes (dilation 25, another threshold) but only the score stage runs, which
    # has nothing to do: the card still describes the samples the build holds.
    ieiw_build(config(threshold + 1.0, dilation=25), stages=["score"])
    again = Path(result["data_card"]).read_text()
    assert "dilation: 9" in again and "dilation: 25" not in again
    assert f"aesthetic_src_min: {threshold}" in again and f"aesthetic_src_min: {threshold + 1.0}" not in again
    assert f"| removal | remove | 8 | {removed} |" in again
