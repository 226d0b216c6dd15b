"""The review API over HTTP (FastAPI's test client), on SQLite and PostgreSQL: auth and bad input."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ieiw.model.review.app import COOKIE, create_app

HEADERS = {"X-Requested-With": "test"}


@pytest.fixture
def review(store, candidate_index):
    """(client, tokens, keys): alice and bob share every sample, carol has her own queue."""
    tokens = {name: store.add_reviewer(name) for name in ("alice", "bob")}
    store.assign(per_sample=2)
    tokens["carol"] = store.add_reviewer("carol")
    with TestClient(create_app(store, candidate_index)) as client:
        yield client, tokens


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def first_sample(client: TestClient, token: str) -> dict:
    key = client.get("/api/me", headers=bearer(token)).json()["next"]
    return client.get(f"/api/samples/{key}", headers=bearer(token)).json()


def test_sign_in_sets_a_cookie_that_authenticates(review, store):
    client, tokens = review
    assert client.post("/api/signin", json={"token": "wrong"}).status_code == 401
    assert client.get("/api/me").status_code == 401
    response = client.post("/api/signin", json={"token": tokens["alice"]})
    assert response.status_code == 200 and response.json() == {"name": "alice"}
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    me = client.get("/api/me").json()
    assert me["name"] == "alice" and me["progress"]["assigned"] == 6 and me["next"]
    view = client.get(f"/api/samples/{me['next']}").json()
    candidate = view["candidates"][0]["id"]
    # a cookie-authenticated write without the page's header (a cross-site form) stores nothing
    refused = client.post(f"/api/samples/{me['next']}/picks", json={"candidate_id": candidate})
    assert refused.status_code == 403 and store.counts()["picks"] == 0
    stored = client.post(f"/api/samples/{me['next']}/picks", json={"candidate_id": candidate},
                         headers=HEADERS)
    assert stored.status_code == 201 and store.counts()["picks"] == 1
    client.post("/api/signout", headers=HEADERS)
    client.cookies.delete(COOKIE)
    assert client.get("/api/me").status_code == 401


def test_bad_picks_get_4xx_and_store_nothing(review, store):
    client, tokens = review
    alice = first_sample(client, tokens["alice"])
    url = f"/api/samples/{alice['key']}/picks"
    mine, hers = bearer(tokens["alice"]), bearer(tokens["carol"])
    good = alice["candidates"][1]["id"]
    before = store.counts()
    assert client.post(url, json={"candidate_id": good}).status_code == 401  # no token
    assert client.post(url, json={"candidate_id": good}, headers=bearer("forged")).status_code == 401
    basic = {"Authorization": "Basic eA=="}
    assert client.post(url, json={"candidate_id": good}, headers=basic).status_code == 401
    assert client.post(url, json={"candidate_id": 987654}, headers=mine).status_code == 422
    assert client.post(url, json={"candidate_id": "x"}, headers=mine).status_code == 422
    other_key = client.get("/api/queue", headers=mine).json()[1]["key"]
    other = client.get(f"/api/samples/{other_key}", headers=mine).json()
    foreign = other["candidates"][0]["id"]  # a real candidate, of another sample
    assert client.post(url, json={"candidate_id": foreign}, headers=mine).status_code == 422
    # carol has no samples: alice's sample is not hers to pick on or even to look at
    assert client.post(url, json={"candidate_id": good}, headers=hers).status_code == 404
    assert client.get(f"/api/samples/{alice['key']}", headers=hers).status_code == 404
    assert client.get(alice["source"], headers=hers).status_code == 404
    unknown = client.post("/api/samples/nope/picks", json={"candidate_id": good}, headers=mine)
    assert unknown.status_code == 404
    assert client.post(f"/api/samples/{alice['key']}/done", headers=hers).status_code == 404
    assert store.counts() == before
    for candidate in alice["candidates"][:2]:
        assert client.post(url, json={"candidate_id": candidate["id"]}, headers=mine).status_code == 201
    third = client.post(url, json={"candidate_id": alice["candidates"][2]["id"]}, headers=mine)
    assert third.status_code == 409 and store.counts()["picks"] == 2


def test_reviewers_see_and_change_only_their_own_picks(review, store):
    client, tokens = review
    alice = first_sample(client, tokens["alice"])
    key = alice["key"]
    bob = client.get(f"/api/samples/{key}", headers=bearer(tokens["bob"])).json()
    assert bob["key"] == key  # shared sample
    mine = alice["candidates"][3]["id"]
    assert client.post(f"/api/samples/{key}/picks", json={"candidate_id": mine},
                       headers=bearer(tokens["alice"])).status_code == 201
    assert client.get(f"/api/samples/{key}", headers=bearer(tokens["bob"])).json()["picks"] == []
    assert client.delete(f"/api/samples/{key}/picks/{mine}", headers=bearer(tokens["bob"])).status_code == 404
    assert client.post(f"/api/samples/{key}/undo", headers=bearer(tokens["bob"])).json() == {"removed": None}
    assert client.get(f"/api/samples/{key}", headers=bearer(tokens["alice"])).json()["picks"] == [mine]
    assert client.post(f"/api/samples/{key}/picks", json={"candidate_id": mine},
                       headers=bearer(tokens["bob"])).status_code == 201
    assert store.counts()["picks"] == 2
    withdrawn = client.delete(f"/api/samples/{key}/picks/{mine}", headers=bearer(tokens["alice"]))
    assert withdrawn.status_code == 200
    assert client.get(f"/api/samples/{key}", headers=bearer(tokens["bob"])).json()["picks"] == [mine]


def test_images_done_skip_and_progress(review, store, candidate_index):
    client, tokens = review
    auth = bearer(tokens["alice"])
    view = first_sample(client, tokens["alice"])
    key = view["key"]
    source = client.get(view["source"], headers=auth)
    assert source.status_code == 200 and source.headers["content-type"] == "image/png"
    assert source.content == candidate_index.read(key, "src.png")
    fifth = client.get(view["candidates"][5]["image"], headers=auth)
    assert fifth.content == candidate_index.read(key, "cand_05.png")
    for bad in ("99.png", "x.png", "..%2F..%2Fetc%2Fpasswd", "-1.png"):
        assert client.get(f"/api/samples/{key}/images/{bad}", headers=auth).status_code == 404
    assert client.get(view["source"]).status_code == 401
    done = client.post(f"/api/samples/{key}/done", headers=auth).json()
    assert done["next"] and done["next"] != key and done["progress"]["done"] == 1
    skipped = client.post(f"/api/samples/{done['next']}/skip", headers=auth).json()
    assert skipped["progress"] == {"reviewer": "alice", "assigned": 6, "done": 1, "skipped": 1, "picks": 0,
                                   "reviewed": 2, "remaining": 4}
    statuses = [q["status"] for q in client.get("/api/queue", headers=auth).json()]
    assert statuses[:2] == ["done", "skipped"] and statuses[2:] == ["pending"] * 4
    status = client.get("/api/status", headers=auth).json()
    assert [row["reviewer"] for row in status["progress"]] == ["alice", "bob", "carol"]
    assert status["agreement"]["samples"] == 0  # bob has not finished the shared samples
    assert client.post(f"/api/samples/{key}/done", headers=bearer(tokens["bob"])).status_code == 200
    assert client.get("/api/status", headers=auth).json()["agreement"]["exact_match"] == 1.0  # both kept none
    assert client.get("/api/status").status_code == 401
    page = client.get("/")
    assert page.status_code == 200 and "Reviewer token" in page.text
