"""Score and filter as plain functions over a real candidate stage: counts add up, every drop has a
reason, corrupt inputs and missing embeddings are counted drops, reruns do nothing twice."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ieiw.quality.config import QualityConfig, default_scores_url, embedding_cache
from ieiw.quality.duplicates import DuplicateSettings
from ieiw.quality.filtering import eval_set_from_urls, filter_shards, read_flags
from ieiw.quality.policy import FilterPolicy, TaskPolicy
from ieiw.quality.report import write_report
from ieiw.quality.scoring import FLOAT_SCORES, ScoringConfig, ScoringModels, read_scores, run_score_shard
from ieiw.storage import manifest
from ieiw.storage.shards import expand_shard_urls, iter_samples


@pytest.fixture(scope="module")
def models(embedder_config, aesthetic_checkpoint):
    return ScoringModels.load(
        ScoringConfig(embedder=embedder_config, aesthetic_checkpoint=aesthetic_checkpoint)
    )


def score_all(candidates_url: str, models, config: QualityConfig) -> tuple[str, list[dict]]:
    scores_url = default_scores_url(candidates_url)
    cache = embedding_cache(config, scores_url)
    shards = expand_shard_urls([candidates_url + "/shards"])
    return scores_url, [run_score_shard(s, scores_url, models, cache, batch_size=4) for s in shards]


def filter_candidates(candidates: dict, scores_url: str, out: str, policy: FilterPolicy, **options):
    """``filter_shards`` over every shard of the candidate stage."""
    return filter_shards(
        expand_shard_urls([candidates["url"] + "/shards"]), scores_url, out, policy, **options
    )


def median_policy(scores: pd.DataFrame) -> FilterPolicy:
    """Bounds at the medians of the random model's scores, so that some pairs pass and some fail."""
    ok = scores[scores["error"].isna()]
    return FilterPolicy(
        default=TaskPolicy(aesthetic_src_min=float(ok["aesthetic_src"].median())),
        tasks={
            "add": TaskPolicy(aesthetic_src_min=None, clip_img_sim_min=float(ok["clip_img_sim"].median()))
        },
        duplicates=DuplicateSettings(clip_min_cosine=None),
    )


def test_score_then_filter_accounts_for_every_candidate(tmp_path, candidates, models, embedder_config):
    config = QualityConfig(scoring=ScoringConfig(embedder=embedder_config))
    scores_url, summaries = score_all(candidates["url"], models, config)
    scores = read_scores(scores_url)
    assert len(scores) == candidates["total"] and scores["key"].is_unique
    errors = dict(zip(scores["key"], scores["error"], strict=True))
    assert errors[candidates["broken"]["corrupt_image"]] == "corrupt_image"
    assert errors[candidates["broken"]["corrupt_json"]] == "corrupt_json"
    ok = scores[scores["error"].isna()]
    for name in ("aesthetic_src", "aesthetic_tgt", "aesthetic_diff", "clip_direction", "clip_img_sim"):
        assert ok[name].notna().all(), name
    assert ok["giqa_src"].isna().all()  # no reference index configured
    np.testing.assert_allclose(
        ok["aesthetic_diff"], (ok["aesthetic_src"] - ok["aesthetic_tgt"]).abs(), atol=1e-5
    )

    # a rerun scores nothing again
    _, again = score_all(candidates["url"], models, config)
    assert all(s["skipped"] for s in again) and not any(s["skipped"] for s in summaries)

    policy = median_policy(scores)
    out = str(tmp_path / "final")
    reports = filter_candidates(candidates, scores_url, out, policy)
    final = manifest.read_manifest(out)
    assert len(final) == candidates["total"] and final["key"].is_unique
    assert final["kept"].sum() + final["drop_reason"].notna().sum() == candidates["total"]
    reasons = final.loc[~final["kept"], "drop_reason"].value_counts().to_dict()
    assert reasons["duplicate"] == 1 and reasons["corrupt_image"] == 1 and reasons["corrupt_json"] == 1
    assert reasons.get("aesthetic_src_below_min", 0) >= 1 and reasons.get("clip_img_sim_below_min", 0) >= 1
    assert 0 < final["kept"].sum() < candidates["total"]
    assert sum(r.kept for r in reports) == final["kept"].sum()

    # kept samples carry their scores in their json, equal to the scores table
    by_key = scores.set_index("key")
    kept = list(iter_samples([out + "/shards"]))
    assert len(kept) == final["kept"].sum()
    for sample in kept:
        assert set(sample.meta.scores) >= {"aesthetic_src", "clip_img_sim"}
        assert sample.meta.scores["aesthetic_src"] == pytest.approx(by_key.loc[sample.key, "aesthetic_src"])
        assert sample.meta.drop_reason is None
    # drops carry the score that dropped them in the manifest
    dropped = final[final["drop_reason"] == "aesthetic_src_below_min"]
    assert all("aesthetic_src" in json.loads(s) for s in dropped["scores"])

    # a rerun writes nothing twice
    rerun = filter_candidates(candidates, scores_url, out, policy)
    assert all(r.skipped for r in rerun) and len(manifest.read_manifest(out)) == candidates["total"]

    # the report a person looks at
    report = write_report(candidates["url"], scores, out, str(tmp_path / "report"), policy)
    files = report["files"]
    for name in ("hist_aesthetic_src", "hist_clip_img_sim", "drops_png"):
        with Image.open(io.BytesIO(Path(files[name]).read_bytes())) as image:
            assert image.format == "PNG" and image.size[0] > 100
    dropped_html = Path(files["dropped_html"]).read_text()
    for reason in reasons:
        assert f"<h2 id='{reason}'>{reason} ({reasons[reason]})</h2>" in dropped_html
    assert dropped_html.count("data:image/jpeg;base64") >= 2 * (len(reasons) - 2)
    gallery = Path(files["gallery_html"]).read_text()
    assert gallery.count('class="pair"') == final["kept"].sum() and "aesthetic_src:" in gallery
    counts = pd.read_csv(files["drops_csv"])
    assert counts["count"].sum() == candidates["total"]


def test_missing_embeddings_and_scores_are_counted_drops(tmp_path, candidates, models, embedder_config):
    config = QualityConfig(scoring=ScoringConfig(embedder=embedder_config))
    scores_url, _ = score_all(candidates["url"], models, config)
    cache = embedding_cache(config, scores_url)
    # lose the cache and one shard's scores part
    shutil.rmtree(cache.url)
    parts = sorted(Path(scores_url, "parts").glob("gen-b-*.parquet"))
    parts[0].unlink()
    policy = FilterPolicy(default=TaskPolicy(), tasks={}, duplicates=DuplicateSettings(clip_min_cosine=0.999))
    out = str(tmp_path / "final")
    filter_candidates(candidates, scores_url, out, policy, cache=embedding_cache(config, scores_url))
    final = manifest.read_manifest(out)
    reasons = final["drop_reason"].value_counts().to_dict()
    assert len(final) == candidates["total"]
    assert reasons["missing_scores"] == 5  # the samples of the shard whose part is gone
    assert reasons["missing_embedding"] == candidates["total"] - 5 - 2
    assert read_flags(out)["missing_embedding"].sum() == reasons["missing_embedding"]


def test_policy_on_an_unscored_model_fails_before_writing(tmp_path, candidates, models, embedder_config):
    config = QualityConfig(scoring=ScoringConfig(embedder=embedder_config))
    scores_url, _ = score_all(candidates["url"], models, config)
    policy = FilterPolicy(default=TaskPolicy(giqa_src_min=1.0), tasks={})
    with pytest.raises(ValueError, match="giqa_src"):
        filter_candidates(candidates, scores_url, str(tmp_path / "f"), policy)
    assert not (tmp_path / "f" / "manifest").exists()


def test_eval_set_images_never_reach_the_final_shards(tmp_path, candidates, models, embedder_config):
    config = QualityConfig(scoring=ScoringConfig(embedder=embedder_config))
    scores_url, _ = score_all(candidates["url"], models, config)
    leaked = candidates["samples"][4]
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    Image.fromarray(leaked.target).save(eval_dir / "held-out.png")
    policy = FilterPolicy(default=TaskPolicy(), tasks={}, duplicates=DuplicateSettings(clip_min_cosine=None))
    out = str(tmp_path / "final")
    filter_candidates(candidates, scores_url, out, policy, eval_set=eval_set_from_urls([str(eval_dir)]))
    final = manifest.read_manifest(out).set_index("key")
    assert final.loc[leaked.key, "drop_reason"] == "eval_leak"
    assert final.loc[leaked.key, "drop_detail"] == "phash:image-0"
    assert leaked.key not in {s.key for s in iter_samples([out + "/shards"])}


def test_giqa_scores_with_a_reference_index(
    tmp_path, candidates, embedder_config, aesthetic_checkpoint, embedder
):
    from quality_helpers import picture

    from ieiw.quality.giqa import GiqaConfig
    from ieiw.quality.giqa_index import ReferenceIndexSettings, build_reference_index

    references = embedder.embed_images([picture(1000 + i) for i in range(20)])
    np.save(tmp_path / "refs.npy", references)
    build_reference_index(str(tmp_path / "refs.npy"), str(tmp_path / "index"), ReferenceIndexSettings())
    scoring = ScoringConfig(
        embedder=embedder_config,
        aesthetic_checkpoint=aesthetic_checkpoint,
        giqa=GiqaConfig(index_dir=str(tmp_path / "index"), k=2),
    )
    models = ScoringModels.load(scoring)
    scores_url, _ = score_all(candidates["url"], models, QualityConfig(scoring=scoring))
    ok = read_scores(scores_url).query("error.isna()")
    assert ok["giqa_src"].gt(0).all() and ok["giqa_tgt"].gt(0).all()
    assert set(FLOAT_SCORES) <= set(ok.columns)
