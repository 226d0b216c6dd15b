"""A whole build with a `quality:` section: generators, then score and filter, then the data card."""

from __future__ import annotations

from pathlib import Path

from flows.build import ieiw_build
from flows.config import BuildConfig
from storage import manifest
from storage.shards import iter_samples


def test_build_scores_filters_and_reports_in_the_data_card(
    prefect_api, phrasecut, embedder_config, aesthetic_checkpoint, tmp_path
):
    annotations, images = phrasecut
    config = BuildConfig.model_validate(
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
                "policy": {"default": {"aesthetic_src_min": -1e9}, "tasks": {}},
            },
        }
    )
    result = ieiw_build(config)
    assert {"removal", "score removal", "filter removal"} <= set(result["stages"])

    final = tmp_path / "out" / "final" / "removal"
    frame = manifest.read_manifest(str(final))
    assert len(frame) == 16 and frame["key"].is_unique
    assert frame["kept"].sum() + (~frame["kept"]).sum() == result["stages"]["filter removal"]["candidates"]
    kept = list(iter_samples(str(final / "shards")))
    assert kept and all("aesthetic_src" in s.meta.scores for s in kept)

    card = Path(result["data_card"]).read_text()
    assert f"| removal | remove | 8 | {sum(1 for s in kept if s.meta.task == 'remove')} |" in card
    assert "## Score histograms" in card and ".png" in card
    assert list((tmp_path / "out" / "reports" / "removal").glob("hist_*.png"))
