"""Preference pairs from the review app's picks and from scored candidates: WebDataset shards through the
commit protocol, and a Hugging Face dataset in the column layout of diffusers' Diffusion-DPO example."""

from __future__ import annotations

import io
import json

import datasets
import pytest
from PIL import Image
from typer.testing import CliRunner

from ieiw.model.candidate_shards import CandidateIndex
from ieiw.model.dpo_layout import DPO_COLUMNS, REJECTED_MEMBER, SOURCE_COLUMN
from ieiw.model.preferences import (
    PreferencesExist,
    ScoredCandidates,
    export_preferences,
    human_pairs,
    read_scored,
    scored_pairs,
)
from ieiw.model.review.store import ReviewStore
from ieiw.storage import manifest
from ieiw.storage.schema import Task
from ieiw.storage.shards import expand_shard_urls, iter_samples, iter_tar_groups


def test_a_pick_is_preferred_to_every_candidate_not_picked_and_votes_add_up():
    votes = {"s1": {"alice": {0, 3}, "bob": {3}, "carol": set()}, "s2": {"alice": set()}}
    pairs = human_pairs(votes, {"s1": 8, "s2": 8})
    by_id = {p.pair_id: p for p in pairs}
    assert len(pairs) == 13  # alice: 0 and 3 over six others; bob: 3 over seven; carol and s2 say nothing
    assert by_id["s1:3>1"].votes == 2 and by_id["s1:3>1"].choosers == ("alice", "bob")
    assert by_id["s1:3>0"].votes == 1 and by_id["s1:3>0"].against == 0  # alice picked both: no preference
    assert all(p.chooser == "human" and p.sample_key == "s1" for p in pairs)
    assert {p.pair_id for p in human_pairs(votes, {"s1": 8, "s2": 8}, min_net_votes=2)} == {
        f"s1:3>{r}" for r in (1, 2, 4, 5, 6, 7)
    }
    # disagreement: dave prefers 1 to 0 and 3, so 0 > 1 has one vote for and one against
    votes["s1"]["dave"] = {1}
    pairs = {p.pair_id: p for p in human_pairs(votes, {"s1": 8, "s2": 8})}
    assert "s1:0>1" not in pairs and "s1:1>0" not in pairs
    assert pairs["s1:3>1"].votes == 2 and pairs["s1:3>1"].against == 1
    assert len(human_pairs(votes, {"s1": 8, "s2": 8}, max_pairs_per_sample=3)) == 3


def test_a_scored_pair_records_its_scorers_own_name(tmp_path):
    """The chooser is the kind of scorer the file names (the part of its name before ``:``), never a fixed
    ``judge``: a reward model, a judge and people scoring by hand stay apart; ``choosers`` keeps the whole
    name."""
    scorers = {"s1": "hand", "s2": "judge:qwen2.5-vl#remove@2", "s3": "reward-model:pickscore", "s4": "rm"}
    lines = tmp_path / "scores.jsonl"
    rows = [{"key": k, "scores": {"0": 5, "1": 1}, "scorer": v} for k, v in scorers.items()]
    rows.append({"key": "s5", "scores": {"0": 5, "1": 1}, "scorer": "judge:x", "chooser": "human"})
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = {p.sample_key: p for p in scored_pairs(read_scored(str(lines)))}
    assert {k: p.chooser for k, p in pairs.items()} == {
        "s1": "hand",
        "s2": "judge",
        "s3": "reward-model",
        "s4": "rm",
        "s5": "human",
    }
    assert {k: p.choosers for k, p in pairs.items() if k != "s5"} == {k: (v,) for k, v in scorers.items()}
    lines.write_text(json.dumps({"key": "s1", "scores": {"0": 1}, "scorer": " "}) + "\n")
    with pytest.raises(ValueError, match="scores.jsonl:1"):
        read_scored(str(lines))


def test_scored_candidates_give_pairs_by_margin(tmp_path):
    scored = [ScoredCandidates("s1", {0: 9.0, 1: 4.0, 2: 8.5, 3: 1.0}, "judge:tiny@rubric-1")]
    pairs = scored_pairs(scored, margin=1.0, max_pairs_per_sample=3)
    assert [(p.chosen, p.rejected, p.margin) for p in pairs] == [(0, 3, 8.0), (2, 3, 7.5), (0, 1, 5.0)]
    assert all(p.chooser == "judge" and p.choosers == ("judge:tiny@rubric-1",) for p in pairs)
    assert len(scored_pairs(scored, margin=1.0, max_pairs_per_sample=None)) == 5  # 0 vs 2 differ by 0.5
    with pytest.raises(ValueError):
        scored_pairs(scored, margin=0)
    lines = tmp_path / "scores.jsonl"
    lines.write_text(json.dumps({"key": "s1", "scores": {"0": 2, "1": 0}, "scorer": "rm"}) + "\n\n")
    assert read_scored(str(lines)) == [ScoredCandidates("s1", {0: 2.0, 1: 0.0}, "rm", "rm")]
    lines.write_text('{"key": "s1"}\n')
    with pytest.raises(ValueError, match="scores.jsonl:1"):
        read_scored(str(lines))


@pytest.fixture
def reviewed(tmp_path, candidate_index):
    """alice picks candidates 0 and 3 of the first sample and 2 of the fifth (second shard); bob picks 3."""
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.sqlite'}")
    store.import_candidates(candidate_index.headers.values())
    people = {name: store.reviewer_by_token(store.add_reviewer(name)) for name in ("alice", "bob")}
    store.assign(per_sample=2)
    queue = [q["key"] for q in store.queue(people["alice"].id)]
    plan = {"alice": {queue[0]: [0, 3], queue[4]: [2]}, "bob": {queue[0]: [3]}}
    for name, samples in plan.items():
        person = people[name]
        for key, positions in samples.items():
            ids = [c["id"] for c in store.sample_view(person.id, key)["candidates"]]
            for position in positions:
                store.add_pick(person.id, key, ids[position])
            store.finish(person.id, key)
    yield store, queue
    store.close()


def test_export_writes_preference_shards_and_a_dpo_dataset(reviewed, candidate_index, tmp_path):
    store, queue = reviewed
    pairs = human_pairs(*store.votes())
    assert len(pairs) == 13 + 7  # the first sample as above (8 candidates), the fifth: 2 over seven
    out, hf = str(tmp_path / "prefs"), str(tmp_path / "hf")
    result = export_preferences(pairs, candidate_index, out, hf_dir=hf)
    assert result.kept == 20 and not result.dropped and result.extra["by_chooser"] == {"human": 20}
    frame = manifest.read_manifest(out)
    assert len(frame) == 20 and set(frame["task"]) == {"preference"}
    samples = {s.key: s for s in iter_samples([out])}  # any reader of ours: the chosen edit is the target
    groups = {k: m for u in expand_shard_urls(out) for k, m in iter_tar_groups(u)}
    for key, members in groups.items():
        meta = samples[key].meta
        extra, source_key = meta.extra, meta.provenance.extra["source_key"]
        assert (
            meta.task == Task.PREFERENCE
            and meta.instruction == candidate_index.headers[source_key].instruction
        )
        assert members["src.png"] == candidate_index.read(source_key, "src.png")
        assert members["tgt.png"] == candidate_index.read(source_key, f"cand_{extra['chosen']:02d}.png")
        assert members[REJECTED_MEMBER] == candidate_index.read(
            source_key, f"cand_{extra['rejected']:02d}.png"
        )
        assert extra["chooser"] == "human" and extra["choosers"]
        assert (
            meta.generator.settings["chosen"]["seed"]
            == candidate_index.headers[source_key].settings[extra["chosen"]].seed
        )
        record = json.loads(members["json"])
        assert record["task"] == "preference" and record["session_id"] == "" and record["turn"] == -1
    # the Diffusion-DPO layout: caption, jpg_0, jpg_1 as encoded bytes, label_0 naming the preferred one
    loaded = datasets.load_dataset(hf, split="train")
    assert {DPO_COLUMNS["caption"], "jpg_0", "jpg_1", "label_0", SOURCE_COLUMN} <= set(loaded.column_names)
    assert len(loaded) == 20 and set(loaded["label_0"]) == {0.0, 1.0}
    for row in loaded:
        preferred, other = (
            (row["jpg_0"], row["jpg_1"]) if row["label_0"] == 1.0 else (row["jpg_1"], row["jpg_0"])
        )
        members = groups[row["key"]]
        assert preferred == members["tgt.png"] and other == members[REJECTED_MEMBER]
        assert Image.open(io.BytesIO(preferred)).convert("RGB").size == (48, 48)
        assert row["caption"] == samples[row["key"]].meta.instruction and row["chooser"] == "human"
    assert "--dataset_split_name train" in result.extra["hf"]["train_command"]

    again = export_preferences(pairs, candidate_index, out)  # the same pairs: nothing to do
    assert again.batches == 0 and again.extra["held"] == 20 and again.records_committed_before == 20
    fewer = human_pairs(*store.votes(), min_net_votes=2)
    with pytest.raises(PreferencesExist, match="pairs"):
        export_preferences(fewer, candidate_index, out)
    assert len(manifest.read_manifest(out)) == 20  # refused before any change
    replaced = export_preferences(fewer, candidate_index, out, overwrite=True)
    assert replaced.kept == 6 and replaced.rebuilt and len(list(iter_samples([out]))) == 6


def test_judge_scores_and_picks_in_one_export_and_missing_candidates_dropped(
    reviewed, candidate_dir, candidate_index, tmp_path
):
    store, queue = reviewed
    scored = [ScoredCandidates(queue[1], {0: 0.9, 1: 0.2, 2: 0.5}, "judge:tiny@rubric-1")]
    pairs = human_pairs(*store.votes()) + scored_pairs(scored, margin=0.35)
    first_shard = CandidateIndex.build(f"{candidate_dir}/candidates-0000.tar")
    assert queue[4] not in first_shard  # its candidates lie in the second shard
    result = export_preferences(pairs, first_shard, str(tmp_path / "mixed"))
    assert result.extra["by_chooser"] == {"human": 20, "judge": 2}
    assert result.kept == 15 and dict(result.dropped) == {"candidate_missing": 7}
    judged = [s for s in iter_samples([str(tmp_path / "mixed")]) if s.meta.extra["chooser"] == "judge"]
    assert sorted(s.meta.extra["margin"] for s in judged) == [0.4, 0.7]
    assert all(s.meta.extra["choosers"] == ["judge:tiny@rubric-1"] for s in judged)


def test_ieiw_export_preferences(reviewed, candidate_dir, tmp_path):
    from ieiw.flows.cli import app

    store, queue = reviewed
    scores = tmp_path / "scores.jsonl"
    scored = [(queue[2], "judge:x"), (queue[3], "hand"), (queue[5], "reward-model:pickscore")]
    scores.write_text(
        "".join(json.dumps({"key": k, "scores": {"0": 3, "5": 1}, "scorer": s}) + "\n" for k, s in scored)
    )
    args = [
        "export-preferences",
        "--candidates",
        candidate_dir,
        "-o",
        str(tmp_path / "out"),
        "--db",
        store.url,
        "--hf",
        str(tmp_path / "hf"),
        "--scores",
        str(scores),
    ]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    shown = " ".join(result.output.split())
    assert "exported 23 preference pairs" in shown
    assert "'hand': 1, 'human': 20, 'judge': 1, 'reward-model': 1" in shown  # each scorer by its own name
    assert "train_diffusion_dpo.py" in result.output
    loaded = datasets.load_dataset(str(tmp_path / "hf"), split="train")
    assert len(loaded) == 23
    by_key = dict(
        zip(loaded["source_key"], zip(loaded["chooser"], loaded["choosers"], strict=True), strict=True)
    )
    assert by_key[queue[3]] == ("hand", ["hand"]) and by_key[queue[5]] == (
        "reward-model",
        ["reward-model:pickscore"],
    )
    stage = {
        s.meta.provenance.extra["source_key"]: s.meta.extra for s in iter_samples([str(tmp_path / "out")])
    }
    assert stage[queue[2]]["chooser"] == "judge" and stage[queue[2]]["choosers"] == ["judge:x"]
    card = (tmp_path / "out" / "DATA_CARD.md").read_text()  # each kind of chooser apart, scorers by name
    for row in ("| hand | 1 |", "| human | 20 |", "| judge | 1 |", "| reward-model | 1 |"):
        assert row in card, card
    assert "| `reward-model:pickscore` | 1 |" in card and "| `judge:x` | 1 |" in card, card
    assert (tmp_path / "hf" / "README.md").read_text() == card
    again = CliRunner().invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0 and "already held 23" in " ".join(again.output.split())


def test_ieiw_export_preferences_from_the_judges_verdicts(candidate_dir, tmp_path):
    """`ieiw judge-candidates`, then `export-preferences --judgements`: the judge's brighter-is-better
    verdicts become pairs whose chooser is the judge, named by its identity and rubric."""
    import numpy as np
    from chat_server import ChatServer
    from judge_server import check_judge_request, images

    from ieiw.flows.cli import app
    from ieiw.model.review.judging import judge_candidates, read_judgements
    from ieiw.quality.judge import JudgeConfig

    def brightness(body: dict) -> str:
        overall = round(np.asarray(images(body)[1].convert("RGB"), dtype=float).mean() / 25.5, 3)
        verdict = {"compliance": 8, "preservation": 8, "realism": 6, "overall": overall}
        return json.dumps({k: {"score": v, "reason": "fixture"} for k, v in verdict.items()})

    judgements = str(tmp_path / "judgements")
    with ChatServer(default=brightness, check=check_judge_request) as server:
        config = JudgeConfig(
            model="pref-judge",
            base_url=server.base_url,
            backoff_seconds=0.01,
            cache_url=str(tmp_path / "cache"),
        )
        judge_candidates(config, candidate_dir, judgements)
    verdicts = read_judgements(judgements)
    overall = {(r["key"], r["position"]): r["judge_overall"] for r in verdicts.to_dict(orient="records")}
    args = ["export-preferences", "--candidates", candidate_dir, "-o", str(tmp_path / "out"), "--no-picks"]
    args += ["--judgements", judgements, "--margin", "0.5", "--max-pairs-per-sample", "2"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    samples = list(iter_samples([str(tmp_path / "out")]))
    assert len(samples) == 2 * 6 and "{'judge': 12}" in " ".join(result.output.split())
    for sample in samples:
        extra, key = sample.meta.extra, sample.meta.provenance.extra["source_key"]
        assert extra["chooser"] == "judge" and extra["choosers"][0].startswith("judge:")
        assert "pref-judge" in extra["choosers"][0] and "#remove" in extra["choosers"][0]  # model#rubric
        assert overall[(key, extra["chosen"])] - overall[(key, extra["rejected"])] >= 0.5
    missing = CliRunner().invoke(app, [*args[:-6], "--judgements", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "judge-candidates" in missing.output
