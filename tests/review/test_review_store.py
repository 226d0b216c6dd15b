"""The review store on SQLite and PostgreSQL: tokens, assignment, picks, limits under concurrency."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from ieiw.model.review.agreement import agreement, jaccard
from ieiw.model.review.store import Conflict, Invalid, NotFound, ReviewStore, hash_token
from ieiw.model.review.tables import Pick, Reviewer


def candidate_ids(store: ReviewStore, reviewer_id: int, key: str) -> list[int]:
    return [c["id"] for c in store.sample_view(reviewer_id, key)["candidates"]]


def test_import_is_idempotent(store, candidate_index):
    assert store.counts()["samples"] == 6 and store.counts()["candidates"] == 48
    assert store.import_candidates(candidate_index.headers.values()) == 0
    assert store.counts()["candidates"] == 48


def test_tokens_are_random_and_stored_hashed(store):
    token = store.add_reviewer("alice")
    assert len(token) >= 40 and store.add_reviewer("bob") != token
    with store._read() as session:
        hashes = list(session.scalars(select(Reviewer.token_hash)))
    assert hash_token(token) in hashes and token not in hashes
    assert store.reviewer_by_token(token).name == "alice"
    assert store.reviewer_by_token("not-a-token") is None and store.reviewer_by_token("") is None
    rotated = store.add_reviewer("alice")
    assert store.reviewer_by_token(token) is None and store.reviewer_by_token(rotated).name == "alice"
    assert store.reviewers() == ["alice", "bob"]


def test_assignment_balances_and_fills_gaps_only(store):
    for name in ("alice", "bob", "carol"):
        store.add_reviewer(name)
    with pytest.raises(Invalid):
        store.assign(per_sample=4)
    assert store.assign(per_sample=2) == 12
    assert store.assign(per_sample=2) == 0
    loads = {p.reviewer: p.assigned for p in store.progress()}
    assert loads == {"alice": 4, "bob": 4, "carol": 4}
    votes_per_sample = {}
    for name in loads:
        person = store.reviewer_by_token(store.add_reviewer(name))
        for item in store.queue(person.id):
            votes_per_sample.setdefault(item["key"], set()).add(name)
    assert len(votes_per_sample) == 6 and all(len(v) == 2 for v in votes_per_sample.values())
    assert store.assign(per_sample=3) == 6  # one more reviewer per sample, nothing else changes


def test_picks_undo_finish_and_progress(store):
    alice = store.reviewer_by_token(store.add_reviewer("alice"))
    store.assign(per_sample=1)
    key = store.queue(alice.id)[0]["key"]
    ids = candidate_ids(store, alice.id, key)
    pick, created = store.add_pick(alice.id, key, ids[2])
    assert created and pick["slot"] == 0
    assert store.add_pick(alice.id, key, ids[2]) == (pick, False)  # picking again stores nothing new
    store.add_pick(alice.id, key, ids[5])
    with pytest.raises(Conflict):
        store.add_pick(alice.id, key, ids[0])
    assert store.sample_view(alice.id, key)["picks"] == [ids[2], ids[5]]
    assert store.undo(alice.id, key) == ids[5]
    store.add_pick(alice.id, key, ids[7])
    assert store.remove_pick(alice.id, key, ids[2]) and not store.remove_pick(alice.id, key, ids[2])
    store.add_pick(alice.id, key, ids[1])
    assert store.sample_view(alice.id, key)["picks"] == [ids[7], ids[1]]
    with store._read() as session:
        stored = session.scalars(select(Pick).where(Pick.candidate_id == ids[7])).one()
        assert stored.settings["seed"] > 0 and stored.settings["checkpoint"] == "ckpt/step-100"
        assert stored.settings["position"] == 7 and stored.created_at is not None
    store.finish(alice.id, key, "done")
    store.finish(alice.id, store.queue(alice.id)[1]["key"], "skipped")
    (progress,) = store.progress()
    assert progress.as_dict() == {"reviewer": "alice", "assigned": 6, "done": 1, "skipped": 1, "picks": 2,
                                  "reviewed": 2, "remaining": 4}


def test_picks_outside_the_queue_or_sample_are_refused(store):
    alice = store.reviewer_by_token(store.add_reviewer("alice"))
    bob = store.reviewer_by_token(store.add_reviewer("bob"))
    store.assign(per_sample=1)
    alice_key, bob_key = store.queue(alice.id)[0]["key"], store.queue(bob.id)[0]["key"]
    with pytest.raises(NotFound):
        store.add_pick(alice.id, bob_key, candidate_ids(store, bob.id, bob_key)[0])
    with pytest.raises(NotFound):
        store.sample_view(alice.id, bob_key)
    with pytest.raises(Invalid):  # a candidate id of another sample
        store.add_pick(alice.id, alice_key, candidate_ids(store, bob.id, bob_key)[0])
    with pytest.raises(Invalid):
        store.add_pick(alice.id, alice_key, 10**9)
    assert store.counts()["picks"] == 0


def test_concurrent_picks_keep_at_most_two_and_never_duplicate(store):
    alice = store.reviewer_by_token(store.add_reviewer("alice"))
    store.assign(per_sample=1)
    first, second = (q["key"] for q in store.queue(alice.id)[:2])
    ids = candidate_ids(store, alice.id, first)
    same = candidate_ids(store, alice.id, second)[3]
    outcomes: list[str] = []
    barrier = threading.Barrier(16)

    def attempt(key: str, candidate_id: int) -> None:
        barrier.wait()
        try:
            _, created = store.add_pick(alice.id, key, candidate_id)
            outcomes.append("created" if created else "existing")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=attempt, args=(first, ids[i])) for i in range(8)]
    threads += [threading.Thread(target=attempt, args=(second, same)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes).count("created") == 3  # two on the first sample, one on the second
    assert outcomes.count("conflict") == 6 and outcomes.count("existing") == 7
    assert len(store.sample_view(alice.id, first)["picks"]) == 2
    assert store.sample_view(alice.id, second)["picks"] == [same]
    assert store.counts()["picks"] == 3


def test_agreement_by_hand():
    votes = {
        "s1": {"a": {1}, "b": {1}},  # same pick
        "s2": {"a": {0, 2}, "b": {2}},  # jaccard 1/2
        "s3": {"a": set(), "b": set()},  # both kept none: they agree
        "s4": {"a": {3}},  # one reviewer only: not counted
    }
    report = agreement(votes, {"s1": 4, "s2": 4, "s3": 4, "s4": 4})
    assert report.samples == 3 and report.pairs == 3
    assert report.mean_jaccard == pytest.approx((1 + 0.5 + 1) / 3)
    assert report.exact_match == pytest.approx(2 / 3)
    # 12 items, 2 raters: 11 agree (only candidate 0 of s2 splits); 5 of 24 ratings are picks
    p = 5 / 24
    chance = p * p + (1 - p) * (1 - p)
    assert report.fleiss_kappa == pytest.approx((11 / 12 - chance) / (1 - chance))
    assert report.by_pair["a & b"]["samples"] == 3
    assert jaccard(set(), set()) == 1.0 and jaccard({1}, {2}) == 0.0


def test_agreement_and_export_list_from_the_store(store):
    alice = store.reviewer_by_token(store.add_reviewer("alice"))
    bob = store.reviewer_by_token(store.add_reviewer("bob"))
    store.assign(per_sample=2)
    key_a, key_b = (q["key"] for q in store.queue(alice.id)[:2])
    ids_a, ids_b = candidate_ids(store, alice.id, key_a), candidate_ids(store, alice.id, key_b)
    for person, picks in ((alice, [ids_a[0], ids_a[1]]), (bob, [ids_a[1]])):
        for candidate in picks:
            store.add_pick(person.id, key_a, candidate)
        store.finish(person.id, key_a)
    store.add_pick(alice.id, key_b, ids_b[4])  # not finished: neither agreement nor export sees it
    report = store.agreement()
    assert report.samples == 1 and report.mean_jaccard == pytest.approx(0.5) and report.exact_match == 0
    picked = store.picked_candidates()
    assert [(p.sample_key, p.position, p.reviewers) for p in picked] == [
        (key_a, 0, ("alice",)), (key_a, 1, ("alice", "bob"))]
    assert [p.position for p in store.picked_candidates(min_votes=2)] == [1]
