"""The quality judge on review candidates: judged once into a stage of their own, shown next to each
candidate by the review app, and compared with what reviewers picked (`ieiw judge-agreement`)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import typer
import yaml
from chat_server import ChatServer
from fastapi.testclient import TestClient
from judge_server import check_judge_request, images
from review_fixtures import candidate_sets, write_candidate_shards, write_candidate_stage
from typer.testing import CliRunner

from ieiw.model.candidate_shards import CandidateIndex
from ieiw.model.review.app import create_app
from ieiw.model.review.judging import (
    JudgementsStage,
    candidate_judgements,
    default_judgements_url,
    judge_agreement_report,
    judge_candidates,
    read_judgements,
)
from ieiw.model.review.serve import free_port
from ieiw.model.review.store import ReviewStore
from ieiw.quality.judge import JudgeConfig
from ieiw.storage.config import WorkerEnv
from ieiw.storage.layout import BuildLayout

N_SAMPLES, N_CANDIDATES = 4, 6


def brightness_answer(body: dict) -> str:
    """A verdict from the candidate itself: ``overall`` is its mean brightness on a 0-10 scale, so the
    brighter of two candidates always scores higher; the other scores are constant."""
    target = np.asarray(images(body)[1].convert("RGB"), dtype=float)
    overall = round(target.mean() / 25.5, 3)
    return json.dumps(
        {
            "compliance": {"score": 8, "reason": "the circle is handled"},
            "preservation": {"score": 8, "reason": "the background is kept"},
            "realism": {"score": 6, "reason": "flat colours"},
            "overall": {"score": overall, "reason": f"brightness {overall}"},
        }
    )


@pytest.fixture(scope="module")
def server():
    with ChatServer(default=brightness_answer, check=check_judge_request) as running:
        yield running


@pytest.fixture
def candidates(tmp_path) -> str:
    folder = tmp_path / "candidates"
    write_candidate_shards(str(folder), n_samples=N_SAMPLES, n_candidates=N_CANDIDATES, per_shard=3)
    return str(folder)


def judge_config(server: ChatServer) -> JudgeConfig:
    return JudgeConfig(model="review-judge", base_url=server.base_url, max_in_flight=4, backoff_seconds=0.01)


@pytest.fixture
def judged(candidates, server) -> str:
    judge_candidates(judge_config(server), candidates)
    return default_judgements_url(candidates)


def brightness_order(index: CandidateIndex, key: str) -> list[int]:
    """The sample's candidate positions, brightest first."""
    header = index.headers[key]
    means = [index.image(key, f"cand_{p:02d}.png").mean() for p in range(len(header.settings))]
    return list(np.argsort(means)[::-1])


def test_every_candidate_is_judged_once(candidates, server, tmp_path):
    before = len(server.requests)
    first = judge_candidates(judge_config(server), candidates)
    assert first.counts["judged"] == N_SAMPLES * N_CANDIDATES == first.counts["requests"]
    assert first.counts["failed"] == 0 and first.records == N_SAMPLES and first.complete
    assert len(server.requests) - before == N_SAMPLES * N_CANDIDATES and server.problems == []
    table = read_judgements(default_judgements_url(candidates))
    assert len(table) == N_SAMPLES * N_CANDIDATES and table["record_id"].is_unique
    assert set(table["task"]) == {"remove"} and set(table["judge_rubric"]) == {"remove@1"}
    # the answers are cached beside the candidates in their build's layout, never inside a stage folder
    answers = BuildLayout.of_stage(candidates).judge_answers
    assert answers == str(tmp_path / "caches" / "judge") and any(Path(answers).rglob("*.json"))
    again = judge_candidates(judge_config(server), candidates)
    assert again.batches == 0 and again.counts.get("requests", 0) == 0  # every batch is committed
    assert again.records_committed_before == N_SAMPLES
    rebuilt = judge_candidates(judge_config(server), candidates, rebuild="yes")
    assert rebuilt.rebuilt and rebuilt.counts["judged"] == N_SAMPLES * N_CANDIDATES
    assert rebuilt.counts.get("requests", 0) == 0  # the cache answered
    assert rebuilt.counts["cache_hits"] == N_SAMPLES * N_CANDIDATES
    assert len(server.requests) - before == N_SAMPLES * N_CANDIDATES


def test_judgements_grow_with_their_candidates_and_never_judge_a_set_twice(server, tmp_path):
    """Candidate sets committed to the candidates stage later become new batches of the judgements."""
    sets = candidate_sets(N_SAMPLES + 2, N_CANDIDATES)
    candidates = write_candidate_stage(str(tmp_path / "candidates"), [sets[:3], sets[3:4]])
    first = judge_candidates(judge_config(server), candidates, batch_size=2)
    assert first.batches == 2 and first.counts["requests"] == N_SAMPLES * N_CANDIDATES
    write_candidate_stage(candidates, [sets[4:]])  # the same stage, grown by a batch
    before = len(server.requests)
    grown = judge_candidates(judge_config(server), candidates, batch_size=2)
    assert grown.records_committed_before == N_SAMPLES and grown.records == 2 and grown.batches == 1
    assert grown.counts["judged"] == 2 * N_CANDIDATES and len(server.requests) - before == 2 * N_CANDIDATES
    table = read_judgements(default_judgements_url(candidates))
    assert sorted(table["key"].unique()) == sorted(s.key for s in sets) and table["record_id"].is_unique


def test_a_served_judge_is_fingerprinted_alike_for_every_kind_of_worker(candidates, server):
    stage = JudgementsStage(judge_config(server), candidates, default_judgements_url(candidates))
    cpu, gpu = WorkerEnv(), WorkerEnv("cuda NVIDIA H100 80GB HBM3", True)
    assert stage.full_fingerprint(cpu).digest == stage.full_fingerprint(gpu).digest
    assert stage.full_fingerprint(cpu).models == {"model": f"api:{server.base_url}/review-judge"}


def test_review_app_shows_the_judge_next_to_each_candidate(candidates, judged, tmp_path):
    index = CandidateIndex.build(candidates)
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.sqlite'}")
    store.import_candidates(index.headers.values())
    token = store.add_reviewer("alice")
    store.assign(per_sample=1)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with TestClient(create_app(store, index, judgements=candidate_judgements(judged))) as client:
            key = client.get("/api/me", headers=headers).json()["next"]
            view = client.get(f"/api/samples/{key}", headers=headers).json()
            page = client.get("/").text
        assert "judgeBlock" in page and "show-judge" in page
        for candidate in view["candidates"]:
            verdict = candidate["judge"]
            assert verdict["model"].endswith("/review-judge") and verdict["rubric"] == "remove@1"
            assert verdict["scores"]["realism"] == 6.0
            assert verdict["reasons"]["overall"] == f"brightness {verdict['scores']['overall']:g}"
        best = brightness_order(index, key)[0]
        overall = {c["position"]: c["judge"]["scores"]["overall"] for c in view["candidates"]}
        assert max(overall, key=overall.get) == best
        with TestClient(create_app(store, index)) as blind:  # no judgements: nothing of the judge shown
            plain = blind.get(f"/api/samples/{key}", headers=headers).json()
        assert all("judge" not in c for c in plain["candidates"])
    finally:
        store.close()


def test_the_review_flow_shows_the_judge_as_the_cli_does(prefect_api, candidates, judged, tmp_path):
    from ieiw.flows.review import review as review_flow

    db = f"sqlite:///{tmp_path / 'review.sqlite'}"
    setup = ReviewStore(db)
    token = setup.add_reviewer("alice")
    setup.close()
    port = free_port()
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.update(review_flow(candidates, db, port=port, poll_seconds=0.3, max_minutes=3))
    )
    runner.start()
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=5) as client:
        while True:
            try:
                client.get("/api/me").raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and runner.is_alive(), "the flow did not serve the app"
                time.sleep(0.3)
        queue = client.get("/api/queue").json()
        view = client.get(f"/api/samples/{queue[0]['key']}").json()
        assert all(c["judge"]["model"].endswith("/review-judge") for c in view["candidates"])
        for item in queue:
            client.post(f"/api/samples/{item['key']}/done").raise_for_status()
    runner.join(timeout=120)
    assert not runner.is_alive() and result["finished"]


def review(store: ReviewStore, index: CandidateIndex, pick: str) -> None:
    """One reviewer who picks the two brightest (or darkest) candidates of every sample."""
    token = store.add_reviewer(f"picks-{pick}")
    person = store.reviewer_by_token(token)
    store.assign(per_sample=1, reviewers=[person.name])
    for item in store.queue(person.id):
        order = brightness_order(index, item["key"])
        chosen = order[:2] if pick == "brightest" else order[-2:]
        view = store.sample_view(person.id, item["key"])
        by_position = {c["position"]: c["id"] for c in view["candidates"]}
        for position in chosen:
            store.add_pick(person.id, item["key"], by_position[int(position)])
        store.finish(person.id, item["key"])


@pytest.mark.parametrize(("pick", "expected"), [("brightest", 1.0), ("darkest", 0.0)])
def test_judge_agreement_ranks_picked_against_rejected(candidates, judged, tmp_path, pick, expected):
    index = CandidateIndex.build(candidates)
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.sqlite'}")
    store.import_candidates(index.headers.values())
    try:
        review(store, index, pick)
        report = {row.score: row for row in judge_agreement_report(store, judged)}
    finally:
        store.close()
    overall = report["judge_overall"]
    assert (overall.picked, overall.rejected, overall.samples) == (2 * N_SAMPLES, 4 * N_SAMPLES, N_SAMPLES)
    assert overall.auc == expected and overall.auc_within == expected
    assert (overall.spearman > 0.5) if expected else (overall.spearman < -0.5)
    constant = report["judge_compliance"]  # the same score for every candidate: no better than chance
    assert constant.auc == 0.5 and constant.spearman is None


def test_judge_candidates_and_judge_agreement_commands(candidates, server, tmp_path):
    from ieiw.flows.commands.quality import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    config = tmp_path / "build.yaml"
    embedder = {"model": "ViT-B-32"}
    judge = judge_config(server).model_dump(mode="json")
    config.write_text(yaml.safe_dump({"quality": {"scoring": {"embedder": embedder, "judge": judge}}}))
    db = f"sqlite:///{tmp_path / 'review.sqlite'}"
    missing = runner.invoke(app, ["judge-agreement", candidates, "--db", db])
    assert missing.exit_code != 0 and "judge-candidates" in missing.output
    made = runner.invoke(app, ["judge-candidates", candidates, "--config", str(config)])
    assert made.exit_code == 0, made.output
    assert json.loads(made.output[made.output.index("{") :])["counts"]["judged"] == N_SAMPLES * N_CANDIDATES
    index = CandidateIndex.build(candidates)
    store = ReviewStore(db)
    store.import_candidates(index.headers.values())
    review(store, index, "brightest")
    store.close()
    shown = runner.invoke(app, ["judge-agreement", candidates, "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    rows = {row["score"]: row for row in json.loads(shown.output)}
    assert rows["judge_overall"]["auc"] == 1.0 and rows["judge_overall"]["picked"] == 2 * N_SAMPLES
    table = runner.invoke(app, ["judge-agreement", candidates, "--db", db], env={"COLUMNS": "160"})
    assert table.exit_code == 0 and "judge_overall" in table.output and "1.000" in table.output
