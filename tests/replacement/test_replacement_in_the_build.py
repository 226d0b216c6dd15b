"""`ieiw build` with a ``replacement:`` section: the object database, then the pairs, each through the
one runner; the data card records both; a rerun starts neither."""

from __future__ import annotations

import pytest
from replacement_build import build_config
from replacement_fixtures import write_sa1b

from ieiw.flows.build import ieiw_build
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.storage.layout import OBJECT_DATABASE
from ieiw.storage.runner import StageSummary

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_the_build_runs_the_database_then_the_pairs(tmp_path, clip_config):
    sa1b = write_sa1b(str(tmp_path / "sa1b"), n_images=3, size=128)
    config = ReplacementConfig.model_validate(
        {
            "sources": [{"kind": "sa1b", "folders": [sa1b]}],
            "embedder": clip_config.model_dump(),
            "labels": {"vocabulary": ["cat", "dog", "cup"]},
            "database": {"batch_size": 2, "index": {"kind": "flat"}},
            "retrieval": {"similarity_ceiling": 2.0, "min_similarity": -2.0},
            "paint": {"backend": "seamless_clone"},
        }
    )
    build = build_config(config, str(tmp_path / "out"))
    stages = ieiw_build(build)["stages"]
    assert list(stages) == [OBJECT_DATABASE, "replacement"]
    database, pairs = (StageSummary(**stages[name]) for name in stages)
    assert database.rows == database.extra["objects"] > 0 and database.dropped == {"bad_annotation": 1}
    assert pairs.kept == 3 and pairs.dropped == {"bad_annotation": 1}
    assert "rows from 4 records" in database.outcome() and "kept 3 samples" in pairs.outcome()
    card = (tmp_path / "out" / "DATA_CARD.md").read_text()
    assert OBJECT_DATABASE in card and "replacement" in card

    again = ieiw_build(build)["stages"]
    assert all(StageSummary(**summary).skipped for summary in again.values())
