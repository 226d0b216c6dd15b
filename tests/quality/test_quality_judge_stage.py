"""The judge and the object verifier inside the score and filter stages, over real stage folders: their
scores and words in the scores table, per-task rules that drop with the failed check's reason, the
verdict and the rewritten instruction in kept samples, the trainer's choice of instruction, a rerun
that asks the judge nothing twice, the fingerprint naming the judge model and rubric version, the
report, the gallery and the data card; and the Prefect ``score`` flow with a judge."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from chat_server import ChatServer
from judge_server import check_judge_request, judge_answer
from judge_tiny_models import grey, square_mask, tiny_owlv2, with_square
from quality_helpers import quality_stages, run_plain, write_candidates

from ieiw.model.config import ShardSet
from ieiw.model.data import StreamSettings, read_shard
from ieiw.model.sample_decode import decode_item, sample_text
from ieiw.quality import judge_rubrics
from ieiw.quality.config import QualityConfig
from ieiw.quality.data_card import render_data_card
from ieiw.quality.duplicates import DuplicateSettings
from ieiw.quality.judge import JUDGE_MALFORMED, JudgeConfig
from ieiw.quality.policy import FilterPolicy, TaskPolicy
from ieiw.quality.report import write_report
from ieiw.quality.scoring import ScoringConfig, read_scores
from ieiw.quality.verifier import NO_QUERY, VerifierConfig
from ieiw.storage import fs, manifest
from ieiw.storage.config import WorkerEnv
from ieiw.storage.layout import BuildLayout
from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, Task, sample_key
from ieiw.storage.shards import iter_samples, iter_tar_groups
from ieiw.storage.stage_folder import StageChanged, open_stage

REPLACE = {"source_object": "red square", "target_object": "blue square"}
# n: (task, source colour, target colour, instruction, extra, outcome under POLICY)
PAIRS = {
    1: (
        "remove",
        "red",
        None,
        "remove the red square number 1",
        {"phrase": "red square"},
        "judge_overall_below_min",
    ),
    9: ("remove", "red", None, "remove the red square number 9", {"phrase": "red square"}, None),
    8: (
        "remove",
        "red",
        "red",
        "remove the red square number 8",
        {"phrase": "red square"},
        "object_still_present",
    ),
    13: ("remove", "red", None, "remove the square number 13", {}, NO_QUERY),
    7: ("add", None, "red", "add a red square number 7", {"phrase": "red square"}, None),
    6: ("replace", "red", "blue", "make the red square blue number 6", REPLACE, None),
    5: ("replace", "red", None, "make the red square blue number 5", REPLACE, "object_missing_in_target"),
    2: ("web_edit", "red", "blue", "please make it blue number 2", {}, None),
    4: ("web_edit", "red", "blue", "garbled request number 4", {}, JUDGE_MALFORMED),
}
POLICY = FilterPolicy(
    default=TaskPolicy(judge_overall_min=5),
    tasks={
        "remove": TaskPolicy(verify_removed_src_min=0.5, verify_removed_tgt_max=0.2),
        "add": TaskPolicy(verify_added_tgt_min=0.5, verify_added_src_max=0.2),
        "replace": TaskPolicy(verify_added_tgt_min=0.5, verify_removed_tgt_max=0.2),
        "web_edit": TaskPolicy(judge_overall_min=1),
    },
    duplicates=DuplicateSettings(phash_max_hamming=None, clip_min_cosine=None),
)


def pair(n: int) -> Sample:
    task, before, after, instruction, extra, _ = PAIRS[n]
    top, left, size = 4 + 2 * (n % 5), 20 + 3 * (n % 4), 22
    background = grey(seed=n)
    source = with_square(background, before, top, left, size) if before else background
    target = with_square(background, after, top, left, size) if after else background
    provenance = Provenance(dataset="synthetic", image_id=f"img-{n}", license="CC0")
    generator = GeneratorInfo(name="judge-test", backend="numpy", settings={"n": n})
    meta = SampleMeta(
        key=sample_key(Task(task), provenance, generator),
        task=Task(task),
        instruction=instruction,
        instruction_source="template",
        provenance=provenance,
        generator=generator,
        record_id=f"rec-{n}",
        extra=extra,
    )
    mask = square_mask(background.shape[:2], top, left, size) if task != "web_edit" else None
    return Sample(meta=meta, source=source, target=target, mask=mask)


@pytest.fixture(scope="module")
def server():
    with ChatServer(default=judge_answer, check=check_judge_request) as running:
        yield running


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory):
    return tiny_owlv2(tmp_path_factory.mktemp("owl") / "tiny-owlv2")


@pytest.fixture(scope="module")
def scoring(embedder_config, server, owl_dir) -> ScoringConfig:
    judge = JudgeConfig(
        model="judge-test",
        base_url=server.base_url,
        rewrite_instruction=True,
        max_in_flight=4,
        max_attempts=2,
        backoff_seconds=0.01,
        timeout=5,
    )
    return ScoringConfig(
        embedder=embedder_config,
        batch_size=4,
        judge=judge,
        verifier=VerifierConfig(model=str(owl_dir), device="cpu"),
    )


def score_all(candidates_url: str, scoring: ScoringConfig, rebuild="no") -> str:
    stage, _ = quality_stages(candidates_url, QualityConfig(scoring=scoring))
    run_plain(stage, rebuild, workers=2)
    return stage.url


def score_fingerprint(scoring: ScoringConfig, candidates_url: str):
    stage, _ = quality_stages(candidates_url, QualityConfig(scoring=scoring))
    return stage.fingerprint(WorkerEnv.here())


@pytest.fixture(scope="module")
def built(tmp_path_factory, scoring, server):
    root = tmp_path_factory.mktemp("judged")
    candidates = str(root / "candidates")
    write_candidates(
        candidates, {"gen-a": [pair(n) for n in (1, 9, 8, 13, 7)], "gen-b": [pair(n) for n in (6, 5, 2, 4)]}
    )
    scores_url = score_all(candidates, scoring)
    asked = len(server.requests)
    config = QualityConfig(scoring=scoring, policy=POLICY)
    out = str(root / "final")
    _, stage = quality_stages(candidates, config, out)
    run_plain(stage)
    keys = {n: pair(n).key for n in PAIRS}
    return {
        "candidates": candidates,
        "scores": scores_url,
        "final": out,
        "asked": asked,
        "keys": keys,
        "config": config,
    }


def test_score_stage_records_the_judge_and_the_verifier(built, server):
    scores = read_scores(built["scores"]).set_index("key")
    keys = built["keys"]
    assert server.problems == []  # every request had two images, the rubric and the answer format
    assert built["asked"] == len(PAIRS) + 1  # the garbled pair was asked twice (max_attempts), the rest once
    for n, (task, *_rest) in PAIRS.items():
        row = scores.loc[keys[n]]
        assert row["judge_rubric"] == f"{judge_rubrics.rubric_for(task).identity()}+instruction"
        assert row["judge_model"] == f"api:{server.base_url}/judge-test"
        if n == 4:
            assert row["judge_error"] == JUDGE_MALFORMED and "invalid:not_json" in row["judge_detail"]
            continue
        assert pd.isna(row["judge_error"]) and row["judge_overall"] == n % 10 and row["judge_compliance"] == 9
        assert json.loads(row["judge_reasons"])["overall"] == f"pair {n}"
        assert row["judge_instruction"] == f"make edit {n}"
    assert scores.loc[keys[9], "verify_removed_src"] > 0.5 > scores.loc[keys[9], "verify_removed_tgt"]
    assert scores.loc[keys[8], "verify_removed_tgt"] > 0.5
    assert scores.loc[keys[7], "verify_added_tgt"] > 0.5 > scores.loc[keys[7], "verify_added_src"]
    assert json.loads(scores.loc[keys[6], "verify_queries"]) == {
        "removed": "red square",
        "added": "blue square",
    }
    assert (
        scores.loc[keys[13], "verify_error"] == NO_QUERY and scores.loc[keys[2], "verify_error"] == NO_QUERY
    )


def test_filter_drops_by_the_judge_and_verifier_rules_of_each_task(built):
    final = manifest.read_manifest(built["final"]).set_index("key")
    assert len(final) == len(PAIRS)
    for n, (*_rest, outcome) in PAIRS.items():
        row = final.loc[built["keys"][n]]
        assert (row["drop_reason"] if not row["kept"] else None) == outcome, n
    assert "judge_overall=1 < 5" in final.loc[built["keys"][1], "drop_detail"]
    assert "invalid:" in final.loc[built["keys"][4], "drop_detail"]  # the judge's problems, not missing_*


def test_kept_samples_carry_the_verdict_and_the_rewritten_instruction(built, server):
    kept = {s.key: s for s in iter_samples(manifest.committed_shards(built["final"]))}
    sample = kept[built["keys"][9]]
    assert (
        sample.meta.judge["model"] == f"api:{server.base_url}/judge-test"
        and sample.meta.judge["rubric"] == "remove@1+instruction"
    )
    assert sample.meta.judge["scores"] == {
        "compliance": 9.0,
        "preservation": 8.0,
        "realism": 7.0,
        "overall": 9.0,
    }
    assert sample.meta.judge["reasons"]["realism"] == "a faint seam"
    assert sample.meta.scores["judge_overall"] == 9.0 and sample.meta.scores["verify_removed_src"] > 0.5
    assert (
        sample.meta.instruction == "remove the red square number 9"
        and sample.meta.instruction_source == "template"
    )
    assert sample.meta.instruction_alternatives == [
        {"text": "make edit 9", "source": f"judge:api:{server.base_url}/judge-test#remove@1+instruction"}
    ]
    records = [
        json.loads(members["json"])
        for url in manifest.committed_shards(built["final"])
        for _, members in iter_tar_groups(url)
    ]
    for record in records:  # flat records of fixed types: JSON strings
        assert isinstance(record["judge"], str) and isinstance(record["instruction_alternatives"], str)
    assert sample_text(sample.meta, "rewritten_instruction") == "make edit 9"
    trained = {}  # what the trainer's stream reads from the final shards with each text field
    for field in ("instruction", "rewritten_instruction"):
        ShardSet(urls=[built["final"]], text_field=field)  # a training config may name it
        for url in manifest.committed_shards(built["final"]):
            for raw in read_shard(url, field, Counter()):
                item = decode_item(raw, random.Random(0), StreamSettings(resolution=32), Counter())
                trained[(field, item["key"])] = item["text"]
    assert trained[("rewritten_instruction", built["keys"][9])] == "make edit 9"
    assert trained[("instruction", built["keys"][9])] == "remove the red square number 9"
    assert sample_text(sample.meta, "instruction") == "remove the red square number 9"
    plain = SampleMeta.model_validate(json.loads(pair(2).meta.to_json_bytes()))
    assert plain.judge == {} and plain.instruction_alternatives == []
    assert sample_text(plain, "rewritten_instruction") == plain.instruction  # none rewritten: the original


def test_rescoring_asks_the_judge_nothing_it_answered(built, scoring, server):
    before = len(server.requests)
    score_all(built["candidates"], scoring, rebuild="yes")  # wipes the scores, not the answer cache
    assert len(server.requests) - before == 2  # only the garbled pair, whose failure was not cached
    assert len(read_scores(built["scores"])) == len(PAIRS)


def test_the_score_fingerprint_names_the_judge_model_and_rubric_versions(built, scoring, server, monkeypatch):
    fingerprint = score_fingerprint(scoring, built["candidates"])
    assert fingerprint.models["judge.model"] == f"api:{server.base_url}/judge-test"
    assert fingerprint.models["verifier.model"].startswith("sha256-tree:")
    assert fingerprint.settings["judge"]["rubrics"]["remove"] == "remove@1+instruction"
    assert "base_url" not in json.dumps(fingerprint.settings)  # where the judge runs is not what it is
    other = scoring.model_copy(update={"judge": scoring.judge.model_copy(update={"model": "judge-2"})})
    with (
        pytest.raises(StageChanged) as changed,
        open_stage(built["scores"], score_fingerprint(other, built["candidates"])),
    ):
        pass
    assert f"judge.model: api:{server.base_url}/judge-test -> api:{server.base_url}/judge-2" in str(
        changed.value
    )
    # Another server, or other weights behind the same name (as its model list says), is another judge:
    # its answers are neither cached for nor mixed with these.
    vllm = {"id": "judge-test", "root": "/models/judge-awq", "max_model_len": 8192, "created": 1}
    identities = []
    for listed in ([vllm], [{**vllm, "created": 2}], [{**vllm, "root": "/models/judge-fp16"}]):
        with ChatServer(default=judge_answer, models=listed) as elsewhere:
            moved = scoring.model_copy(
                update={"judge": scoring.judge.model_copy(update={"base_url": elsewhere.base_url})}
            )
            identities.append(score_fingerprint(moved, built["candidates"]).models["judge.model"])
    assert all(i.startswith("api:http://127.0.0.1:") and "/judge-test#" in i for i in identities)
    assert identities[0] != fingerprint.models["judge.model"] and len(set(identities)) == 3  # three servers
    same_weights = [i.split("#")[1] for i in identities]
    assert (
        same_weights[0] == same_weights[1] != same_weights[2]
    )  # a restart is not a new model; a new root is
    bumped = dataclasses.replace(judge_rubrics.RUBRICS["remove"], version=2)
    monkeypatch.setitem(judge_rubrics.RUBRICS, "remove", bumped)
    with (
        pytest.raises(StageChanged) as reworded,
        open_stage(built["scores"], score_fingerprint(scoring, built["candidates"])),
    ):
        pass
    assert reworded.value.changes == [
        'score.judge.rubrics.remove: "remove@1+instruction" -> "remove@2+instruction"'
    ]


def test_report_gallery_and_data_card_show_the_judge(built, tmp_path):
    report = write_report(
        built["candidates"], read_scores(built["scores"]), built["final"], str(tmp_path / "report"), POLICY
    )
    assert {"hist_judge_overall", "hist_verify_removed_src"} <= set(report["files"])
    gallery = fs.read_bytes(report["files"]["gallery_html"]).decode()
    assert "a faint seam" in gallery and "make edit 9" in gallery and "remove@1+instruction" in gallery
    card = render_data_card("judged", {"test": built["candidates"]}, {"test": built["final"]})
    section = card[card.index("## Judge and object checks") :]
    assert "| test | remove | judge_overall |" in section
    for reason in ("object_still_present", "object_missing_in_target", "judge_overall_below_min", NO_QUERY):
        assert f"| {reason} |" in section
    assert "| test | web_edit | judge_malformed_answer | 1 |" in section
    assert "| test | remove | 4 | 4 | 1 |" in section  # judged, rewritten, rewritten and kept


def test_score_flow_with_a_judge(tmp_path, built, scoring, server, prefect_api):
    from ieiw.flows.stage_flow import run_stage_flow

    candidates = str(tmp_path / "candidates")
    write_candidates(candidates, {"gen-a": [pair(n) for n in (9, 7, 2)]})
    config = QualityConfig(scoring=scoring.model_copy(update={"verifier": None}))
    stage, _ = quality_stages(candidates, config)
    before = len(server.requests)
    result = run_stage_flow(stage)
    assert result.rows == 3 and result.extra["mean_by_task"]["remove"]["judge_overall"] == 9.0
    assert len(server.requests) - before == 3
    again = run_stage_flow(stage, rebuild="yes")
    assert again.rebuilt and len(server.requests) - before == 3  # the rebuild was answered by the cache
    assert again.rows == 3 and list(Path(BuildLayout.of_stage(candidates).judge_answers).rglob("*.json"))
