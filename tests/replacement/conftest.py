"""Shared fixtures of the replacement tests: tiny models (built once per session) and Prefect."""

from __future__ import annotations

import pytest
from replacement_tiny_models import tiny_blip, tiny_clip, tiny_paint_by_example, tiny_sam


@pytest.fixture(scope="session")
def clip_config(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def sam_config(tmp_path_factory):
    return tiny_sam(tmp_path_factory.mktemp("sam"))


@pytest.fixture(scope="session")
def paint_by_example_dir(tmp_path_factory):
    return tiny_paint_by_example(tmp_path_factory.mktemp("pbe") / "paint-by-example")


@pytest.fixture(scope="session")
def blip_dir(tmp_path_factory):
    return tiny_blip(tmp_path_factory.mktemp("blip") / "blip")


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API (SQLite) for the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
