"""The review commands: tokens, `ieiw review` as one command serving the app, status, export-picks."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
import typer
from cli_text import words
from typer.testing import CliRunner

from ieiw.flows.commands.review import register
from ieiw.model.review.serve import free_port
from ieiw.model.review.store import ReviewStore
from ieiw.storage.shards import iter_samples

LAUNCH = (
    "import typer; from ieiw.flows.commands.review import register; app = typer.Typer(); register(app); app()"
)


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"`ieiw review` exited: {process.communicate()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("`ieiw review` did not start")


def test_tokens_review_status_and_export(cli, candidate_dir, tmp_path):
    db = f"sqlite:///{tmp_path / 'review.sqlite'}"
    made = cli("review-token", "alice", "--db", db)
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    assert ReviewStore(db).reviewer_by_token(token).name == "alice"
    port = free_port()
    env = {**os.environ, "IEIW_REVIEW_DB": db}  # the database from the environment, as a team would set it
    process = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, "review", "--candidates", candidate_dir, "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url, process)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            me = client.get("/api/me").json()
            assert me["progress"]["assigned"] == 6
            view = client.get(f"/api/samples/{me['next']}").json()
            assert client.post(f"/api/samples/{me['next']}/picks",
                               json={"candidate_id": view["candidates"][6]["id"]}).status_code == 201
            assert client.post(f"/api/samples/{me['next']}/done").status_code == 200
            assert client.get("/api/me", headers={"Authorization": "Bearer wrong"}).status_code == 401
    finally:
        process.terminate()
        output, errors = process.communicate(timeout=30)
    assert "6 samples (6 new), 6 new assignments" in output, output + errors

    status = cli("review-status", "--db", db)
    assert status.exit_code == 0 and "alice" in status.output and "null" not in status.output
    assert "no sample has two finished reviews yet" in words(status.output)
    out = tmp_path / "aligned"
    exported = cli("export-picks", "--candidates", candidate_dir, "--out", out, "--db", db)
    assert exported.exit_code == 0, exported.output
    assert "exported 1 picked edits" in exported.output
    (sample,) = list(iter_samples([str(out / "shards")]))
    settings = sample.meta.generator.settings
    assert settings["candidate"] == 6 and settings["reviewers"] == ["alice"]
    again = cli("export-picks", "--candidates", candidate_dir, "--out", out, "--db", db)
    assert again.exit_code == 0 and "already holds this export" in words(again.output)
    other = cli("export-picks", "--candidates", candidate_dir, "--out", out, "--db", db, "--min-votes", 2)
    assert other.exit_code != 0 and "already holds an export" in words(other.output)
    assert len(list(iter_samples([str(out)]))) == 1
    rotated = cli("review-token", "alice", "--db", db)
    new_token = rotated.output.strip().splitlines()[-1]
    assert ReviewStore(db).reviewer_by_token(token) is None and new_token != token


def _candidate_ids(store: ReviewStore, reviewer_id: int, key: str) -> list[int]:
    return [c["id"] for c in store.sample_view(reviewer_id, key)["candidates"]]


def test_review_status_is_a_readable_table_and_json_for_scripts(cli, candidate_index, tmp_path):
    """Progress per reviewer and the agreement as tables (no raw JSON of nulls); --json for machines."""
    import json

    db = f"sqlite:///{tmp_path / 'review.sqlite'}"
    store = ReviewStore(db)
    store.import_candidates(candidate_index.headers.values())
    alice = store.reviewer_by_token(store.add_reviewer("alice"))
    bob = store.reviewer_by_token(store.add_reviewer("bob"))
    store.assign(per_sample=2)
    key = store.queue(alice.id)[0]["key"]
    ids = _candidate_ids(store, alice.id, key)
    for person, picks in ((alice, [ids[0], ids[1]]), (bob, [ids[1]])):
        for candidate in picks:
            store.add_pick(person.id, key, candidate)
        store.finish(person.id, key)
    store.close()

    table = cli("review-status", "--db", db)
    assert table.exit_code == 0, table.output
    shown = words(table.output)
    assert "null" not in shown and "{" not in shown
    assert "alice 6 1 0 5 2" in shown and "bob 6 1 0 5 1" in shown  # assigned done skipped remaining picks
    assert "Agreement over 1 samples (1 pairs of reviews)" in shown
    assert "all reviewers 0.500 0.000 1" in shown and "alice & bob 0.500 0.000 1" in shown
    assert "Fleiss' kappa (picked or not, over all candidates):" in shown

    machine = cli("review-status", "--db", db, "--json")
    assert machine.exit_code == 0, machine.output
    report = json.loads(machine.output)
    rows = [(p["reviewer"], p["done"], p["picks"]) for p in report["progress"]]
    assert rows == [("alice", 1, 2), ("bob", 1, 1)]
    assert report["agreement"]["samples"] == 1 and report["agreement"]["mean_jaccard"] == 0.5
