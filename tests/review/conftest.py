"""Fixtures of the review tests: candidate shards, a PostgreSQL server, a store on either database."""

from __future__ import annotations

import pytest
from postgres_server import postgres_server
from review_fixtures import write_candidate_shards

from ieiw.model.candidate_shards import CandidateIndex
from ieiw.model.review.store import ReviewStore


@pytest.fixture(scope="session")
def candidate_dir(tmp_path_factory) -> str:
    """Six samples with eight candidates each, four samples per shard (two shards)."""
    folder = tmp_path_factory.mktemp("candidates")
    write_candidate_shards(str(folder), n_samples=6, n_candidates=8, per_shard=4)
    return str(folder)


@pytest.fixture(scope="session")
def candidate_index(candidate_dir) -> CandidateIndex:
    return CandidateIndex.build(candidate_dir)


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server for the session, stopped at the end."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty review database: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.sqlite'}"
    return request.getfixturevalue("postgres").create_database("review")


@pytest.fixture
def store(db_url, candidate_index):
    """A store with the candidate samples imported; no reviewers yet."""
    review = ReviewStore(db_url)
    review.import_candidates(candidate_index.headers.values())
    yield review
    review.close()
