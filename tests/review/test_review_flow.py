"""The `ieiw_review` flow against a real Prefect server: it serves the app, watches, publishes artifacts."""

from __future__ import annotations

import threading
import time

import httpx
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from ieiw.flows.review import review
from ieiw.model.review.serve import free_port
from ieiw.model.review.store import ReviewStore


def test_flow_serves_the_review_and_publishes_progress(prefect_api, candidate_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'review.sqlite'}"
    setup = ReviewStore(db)
    tokens = {name: setup.add_reviewer(name) for name in ("alice", "bob")}
    setup.close()
    port = free_port()
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(review(
        candidate_dir, db, per_sample=2, port=port, poll_seconds=0.3, max_minutes=3)))
    runner.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            assert time.monotonic() < deadline and runner.is_alive(), "the flow did not serve the app"
            time.sleep(0.3)
    for name, picks in (("alice", [1]), ("bob", [1, 2])):
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens[name]}"}) as client:
            for item in client.get("/api/queue").json():
                view = client.get(f"/api/samples/{item['key']}").json()
                for position in picks:
                    client.post(f"/api/samples/{item['key']}/picks",
                                json={"candidate_id": view["candidates"][position]["id"]}).raise_for_status()
                client.post(f"/api/samples/{item['key']}/done").raise_for_status()
    runner.join(timeout=120)
    assert not runner.is_alive() and result["finished"]
    assert result["imported"] == 6 and result["assigned"] == 12 and result["counts"]["picks"] == 18
    assert {row["reviewer"]: row["remaining"] for row in result["progress"]} == {"alice": 0, "bob": 0}
    agreement = result["agreement"]
    assert agreement["samples"] == 6 and agreement["mean_jaccard"] == 0.5 and agreement["exact_match"] == 0.0

    keys = ["review-progress", "review-reviewers", "review-agreement"]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    latest = {}
    for artifact in sorted(found, key=lambda a: a.created):
        latest[artifact.key] = artifact
    assert set(latest) == set(keys)
    assert float(latest["review-progress"].data) == 100.0
    assert '"remaining": 0' in str(latest["review-reviewers"].data).replace("'", '"')
    assert "mean Jaccard of pick sets | 0.500" in str(latest["review-agreement"].data)
