"""Fixtures of the grounded removal tests: tiny models of the real classes saved as real checkpoints,
and photos with planted objects."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for folder in ("quality", "model"):  # the verifier test's OWLv2 vocabulary, the tiny open_clip model
    if str(TESTS / folder) not in sys.path:
        sys.path.insert(0, str(TESTS / folder))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from grounded_helpers import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("grounded-models"))


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> Path:
    """A folder of photos, one per planted case of :data:`grounded_helpers.CASES`."""
    from grounded_helpers import write_planted

    return write_planted(tmp_path_factory.mktemp("planted") / "photos")
