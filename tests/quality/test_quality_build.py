"""A whole build with a `quality:` section: generators, then score and filter, then the data card."""

from __future__ import annotations

from pathlib import Path

from ieiw.flows.build import ieiw_build
from ieiw.flows.config import BuildConfig
from ieiw.quality.config import default_scores_url
from ieiw.quality.scoring import read_scores
from ieiw.storage import manifest
from ieiw.storage.shards import iter_samples


def test_build_scores_filters_and_reports_in_the_data_card(
    prefect_api, phrasecut, embedder_config, aesthetic_checkpoint, tmp_path
):
    """Score first, then filter at the median source aesthetic score: the filter keeps exactly the
    candidates at or above it and names the rule for the others."""
    annotations, images = phrasecut

    def config(threshold: float) -> BuildConfig:
        return BuildConfig.model_validate(
            {
                "name": "scored",
                "output": str(tmp_path / "out"),
                "removal": {"source": {"annotations": [annotations], "images": images}, "batch_size": 4},
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

    scored = ieiw_build(config(0.0), stages=["removal", "score"])
    assert {"removal", "score removal"} <= set(scored["stages"])
    scores = read_scores(default_scores_url(str(tmp_path / "out" / "removal")))
    assert len(scores) == 16 and scores["aesthetic_src"].nunique() > 2
    threshold = float(scores["aesthetic_src"].median())
    expected_kept = set(scores.loc[scores["aesthetic_src"] >= threshold, "key"])
    assert 0 < len(expected_kept) < 16

    result = ieiw_build(config(threshold), stages=["filter"])
    final = tmp_path / "out" / "final" / "removal"
    frame = manifest.read_manifest(str(final))
    assert len(frame) == 16 and frame["key"].is_unique
    assert set(frame.loc[frame["kept"], "key"]) == expected_kept
    assert set(frame.loc[~frame["kept"], "drop_reason"]) == {"aesthetic_src_below_min"}
    kept = list(iter_samples(str(final / "shards")))
    assert {s.key for s in kept} == expected_kept
    assert all(s.meta.scores["aesthetic_src"] >= threshold for s in kept)

    card = Path(result["data_card"]).read_text()
    assert f"| removal | remove | 8 | {sum(1 for s in kept if s.meta.task == 'remove')} |" in card
    assert "## Score histograms" in card and ".png" in card
    assert list((tmp_path / "out" / "reports" / "removal").glob("hist_*.png"))
