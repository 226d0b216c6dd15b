"""Score and filter as plain functions over real stage folders: counts add up, every drop has a reason,
corrupt inputs and missing embeddings are counted drops, reruns do nothing twice, kept samples are
the candidates' bytes."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from quality_helpers import candidate_samples, quality_stages, run_plain, write_candidates

from ieiw.quality.build_flags import read_flags
from ieiw.quality.config import QualityConfig
from ieiw.quality.duplicates import DuplicateSettings
from ieiw.quality.policy import FilterPolicy, TaskPolicy, evaluate
from ieiw.quality.report import write_report
from ieiw.quality.scoring import FLOAT_SCORES, JUDGE_SCORES, ScoringConfig, read_scores
from ieiw.quality.verifier import VERIFY_SCORES
from ieiw.storage import manifest
from ieiw.storage.layout import BuildLayout
from ieiw.storage.schema import SampleMeta
from ieiw.storage.shards import ShardSpec, iter_samples, iter_tar_groups
from ieiw.storage.stage_folder import read_listing, read_record


@pytest.fixture(scope="module")
def scoring(embedder_config, aesthetic_checkpoint) -> ScoringConfig:
    return ScoringConfig(embedder=embedder_config, aesthetic_checkpoint=aesthetic_checkpoint, batch_size=4)


def score_all(candidates_url: str, config: QualityConfig, rebuild="no"):
    """The score stage over the committed candidate shards, through the one runner on threads."""
    stage, _ = quality_stages(candidates_url, config)
    return stage.url, run_plain(stage, rebuild)


def filter_all(candidates_url: str, out: str, config: QualityConfig, rebuild="no"):
    """The filter stage over every committed candidate shard, through the one runner on threads."""
    _, stage = quality_stages(candidates_url, config, out)
    return run_plain(stage, rebuild)


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


def expected_outcomes(scores: pd.DataFrame, policy: FilterPolicy, duplicates: dict[str, str]) -> dict:
    """Every candidate's outcome (None when kept), worked out from the scores by the policy alone."""
    out = {}
    for row in scores.itertuples(index=False):
        if isinstance(row.error, str):
            out[row.key] = row.error
            continue
        values = {s: float(getattr(row, s)) for s in FLOAT_SCORES if not np.isnan(getattr(row, s))}
        out[row.key] = evaluate(policy, row.task, values, duplicate_of=duplicates.get(row.key)).reason
    return out


def test_score_then_filter_accounts_for_every_candidate(tmp_path, candidates, scoring):
    config = QualityConfig(scoring=scoring)
    scores_url, summary = score_all(candidates["url"], config)
    scores = read_scores(scores_url)
    assert len(scores) == candidates["total"] == 14 and scores["key"].is_unique
    assert (
        set(scores["fingerprint"])
        == {read_record(scores_url)["fingerprint"]["digest"]}
        == {summary.fingerprint}
    )
    assert summary.rows == 14 and summary.counts == {"corrupt_image": 1, "corrupt_json": 1}
    errors = dict(zip(scores["key"], scores["error"], strict=True))
    assert errors[candidates["broken"]["corrupt_image"]] == "corrupt_image"
    assert errors[candidates["broken"]["corrupt_json"]] == "corrupt_json"
    ok = scores[scores["error"].isna()]
    assert len(ok) == 12
    for name in ("aesthetic_src", "aesthetic_tgt", "aesthetic_diff", "clip_direction", "clip_img_sim"):
        assert ok[name].notna().all(), name
    assert ok["giqa_src"].isna().all()  # no reference index configured
    np.testing.assert_allclose(
        ok["aesthetic_diff"], (ok["aesthetic_src"] - ok["aesthetic_tgt"]).abs(), atol=1e-5
    )
    # one batch per candidate shard, its record id the shard's name
    listing = read_listing(scores_url).to_pandas()
    assert sorted(listing["record_id"]) == ["broken-0000.tar", "gen-a-0000.tar", "gen-b-0000.tar"]
    assert summary.batches == 3 and listing["batch"].is_unique

    # a rerun scores nothing again
    _, again = score_all(candidates["url"], config)
    assert again.records == again.batches == again.rows == 0 and again.records_committed_before == 3

    policy = median_policy(scores)
    config = QualityConfig(scoring=scoring, policy=policy)
    out = str(tmp_path / "final")
    filtered = filter_all(candidates["url"], out, config)
    final = manifest.read_manifest(out)
    assert len(final) == 14 and final["key"].is_unique
    samples = candidates["samples"]
    first, second = sorted([samples[0].key, samples[1].key])  # pair 1 repeats pair 0: the later key goes
    expected = expected_outcomes(scores, policy, {second: f"phash:{first}"})
    assert expected[second] == "duplicate"
    rows = zip(final["key"], final["kept"], final["drop_reason"], strict=True)
    outcomes = {key: None if kept else reason for key, kept, reason in rows}
    assert outcomes == expected
    reasons = final.loc[~final["kept"], "drop_reason"].value_counts().to_dict()
    assert reasons["duplicate"] == 1 and reasons["corrupt_image"] == 1 and reasons["corrupt_json"] == 1
    assert reasons.get("aesthetic_src_below_min", 0) >= 1 and reasons.get("clip_img_sim_below_min", 0) >= 1
    kept_keys = {k for k, v in expected.items() if v is None}
    assert 0 < len(kept_keys) < 14 and final["kept"].sum() == len(kept_keys)
    assert filtered.kept == len(kept_keys) and filtered.records == 3
    assert read_flags(out)["duplicate_of"].tolist() == [f"phash:{first}"]

    # kept samples carry their scores in their json, equal to the scores table
    by_key = scores.set_index("key")
    kept = list(iter_samples(out))
    assert {s.key for s in kept} == kept_keys
    for sample in kept:
        assert set(sample.meta.scores) == set(FLOAT_SCORES) - {"giqa_src", "giqa_tgt", "giqa_diff"} - set(
            JUDGE_SCORES + VERIFY_SCORES
        )  # no judge or verifier configured
        for name, value in sample.meta.scores.items():
            assert value == pytest.approx(float(by_key.loc[sample.key, name]), rel=1e-6), name
        assert sample.meta.drop_reason is None
    # drops carry the score that dropped them in the manifest
    dropped = final[final["drop_reason"] == "aesthetic_src_below_min"]
    assert all("aesthetic_src" in json.loads(s) for s in dropped["scores"])

    # a rerun writes nothing twice
    rerun = filter_all(candidates["url"], out, config)
    assert rerun.records == rerun.kept == 0 and len(manifest.read_manifest(out)) == 14

    # the report a person looks at, written by the filter where the layout puts it
    layout = BuildLayout.of_stage(candidates["url"])
    files = filtered.extra["report"]
    assert files["index_html"].startswith(layout.report("candidates"))
    again = write_report(candidates["url"], scores, out, str(tmp_path / "report"), policy)
    assert sorted(again["files"]) == sorted(files)
    for name in ("hist_aesthetic_src", "hist_clip_img_sim", "drops_png"):
        with Image.open(io.BytesIO(Path(files[name]).read_bytes())) as image:
            assert image.format == "PNG" and image.size[0] > 100
    dropped_html = Path(files["dropped_html"]).read_text()
    for reason in reasons:
        assert f"<h2 id='{reason}'>{reason} ({reasons[reason]})</h2>" in dropped_html
    assert dropped_html.count("data:image/jpeg;base64") == 2 * (sum(reasons.values()) - 2)
    gallery = Path(files["gallery_html"]).read_text()
    assert gallery.count('class="pair"') == len(kept_keys) and "aesthetic_src:" in gallery
    counts = pd.read_csv(files["drops_csv"])
    assert counts["count"].sum() == 14


def test_kept_samples_are_the_candidates_bytes(tmp_path, scoring):
    """JPEG candidates stay the same JPEG bytes in the final shards; only the json changes (scores)."""
    stage = str(tmp_path / "candidates")
    samples = candidate_samples()[3:9]
    write_candidates(stage, {"jpeg": samples}, ShardSpec(image_format="jpg", jpeg_quality=80, max_samples=4))
    # the tiny random CLIP finds every pair alike: duplicates by their hashes only
    policy = FilterPolicy(default=TaskPolicy(), tasks={}, duplicates=DuplicateSettings(clip_min_cosine=None))
    config = QualityConfig(scoring=scoring, policy=policy)
    score_all(stage, config)
    out = str(tmp_path / "final")
    filter_all(stage, out, config)
    before = {k: m for s in manifest.committed_shards(stage) for k, m in iter_tar_groups(s)}
    after = {k: m for s in manifest.committed_shards(out) for k, m in iter_tar_groups(s)}
    assert sorted(after) == sorted(s.key for s in samples)  # nothing dropped by this policy
    for key, members in after.items():
        assert sorted(members) == ["json", "mask.png", "src.jpg", "tgt.jpg"]
        for member in ("src.jpg", "tgt.jpg", "mask.png"):
            assert members[member] == before[key][member]
        old = SampleMeta.model_validate_json(before[key]["json"])
        new = SampleMeta.model_validate_json(members["json"])
        assert old.scores == {} and set(new.scores) >= {"aesthetic_src", "clip_img_sim"}
        assert new.model_copy(update={"scores": {}}) == old
    widths = manifest.read_manifest(out).set_index("key")
    for sample in samples:
        assert (widths.loc[sample.key, "width"], widths.loc[sample.key, "height"]) == (48, 48)


def test_missing_embeddings_and_scores_are_counted_drops(tmp_path, scoring):
    config = QualityConfig(
        scoring=scoring,
        policy=FilterPolicy(
            default=TaskPolicy(), tasks={}, duplicates=DuplicateSettings(clip_min_cosine=0.999)
        ),
    )
    stage = str(tmp_path / "candidates")
    samples = candidate_samples()
    write_candidates(stage, {"gen-a": samples[:7]}, broken=samples[5])
    scores_url, _ = score_all(stage, config)
    write_candidates(stage, {"gen-b": samples[7:]})  # gen-b's 5 samples are never scored
    layout = BuildLayout.of_stage(stage)
    shutil.rmtree(layout.embeddings)  # and the embeddings are lost
    out = str(tmp_path / "final")
    filter_all(stage, out, config)
    final = manifest.read_manifest(out)
    reasons = final["drop_reason"].value_counts().to_dict()
    assert len(final) == 14 and final["kept"].sum() == 0
    assert reasons == {"missing_scores": 5, "missing_embedding": 7, "corrupt_image": 1, "corrupt_json": 1}
    assert read_flags(out)["missing_embedding"].sum() == 7


def test_policy_on_an_unscored_model_fails_before_writing(tmp_path, candidates, embedder_config):
    scoring = ScoringConfig(embedder=embedder_config)  # no aesthetic head: no aesthetic scores
    score_all(candidates["url"], QualityConfig(scoring=scoring))
    config = QualityConfig(
        scoring=scoring, policy=FilterPolicy(default=TaskPolicy(giqa_src_min=1.0), tasks={})
    )
    with pytest.raises(ValueError, match="giqa_src"):
        filter_all(candidates["url"], str(tmp_path / "f"), config)
    assert not (tmp_path / "f" / "manifest").exists() and not (tmp_path / "f" / "shards").exists()


def test_eval_set_images_never_reach_the_final_shards(tmp_path, candidates, scoring):
    leaked = candidates["samples"][4]
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    Image.fromarray(leaked.target).save(eval_dir / "held-out.png")
    config = QualityConfig(
        scoring=scoring,
        policy=FilterPolicy(
            default=TaskPolicy(),
            tasks={},
            duplicates=DuplicateSettings(clip_min_cosine=None, eval_clip_min_cosine=None),
        ),
        eval_set=[str(eval_dir)],
    )
    score_all(candidates["url"], config)
    out = str(tmp_path / "final")
    filter_all(candidates["url"], out, config)
    final = manifest.read_manifest(out).set_index("key")
    assert final.loc[leaked.key, "drop_reason"] == "eval_leak"
    assert final.loc[leaked.key, "drop_detail"] == "phash:image-0"
    assert (final["drop_reason"] == "eval_leak").sum() == 1
    assert leaked.key not in {s.key for s in iter_samples(out)}


def test_uncommitted_candidate_shards_are_never_scored(tmp_path, candidates, scoring):
    """A shard a killed generator left in shards/ without its manifest part does not exist for score."""
    stray = Path(candidates["url"], "shards", "gen-c-0000.tar")
    shutil.copy(Path(candidates["url"], "shards", "gen-a-0000.tar"), stray)
    with tarfile.open(stray) as tar:
        assert len(tar.getnames()) == 7 * 4  # src, tgt, mask and json of seven samples
    scores_url, summary = score_all(candidates["url"], QualityConfig(scoring=scoring))
    scores = read_scores(scores_url)
    assert sorted(set(scores["shard"])) == ["broken-0000.tar", "gen-a-0000.tar", "gen-b-0000.tar"]
    assert summary.records == 3 and len(scores) == 14 and scores["key"].is_unique


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
    scores_url, _ = score_all(candidates["url"], QualityConfig(scoring=scoring))
    ok = read_scores(scores_url).query("error.isna()")
    assert len(ok) == 12 and ok["giqa_src"].gt(0).all() and ok["giqa_tgt"].gt(0).all()
    assert set(FLOAT_SCORES) <= set(ok.columns)
    recorded = read_record(scores_url)["fingerprint"]["models"]["giqa.index_dir"]
    assert recorded.startswith("sha256-index:")
