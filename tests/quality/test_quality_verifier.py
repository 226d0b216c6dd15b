"""The object verifier with a tiny OWLv2 of the real class whose weights make it find red and blue
squares: each check of each task drops what it should, with the reason that names the check."""

from __future__ import annotations

import math

import pytest
from judge_tiny_models import grey, square_mask, tiny_owlv2, with_square

from ieiw.quality.policy import FilterPolicy, TaskPolicy, evaluate
from ieiw.quality.verifier import (
    NO_MASK,
    NO_QUERY,
    ObjectVerifier,
    VerifierConfig,
    VerifyItem,
    object_queries,
)

POLICY = FilterPolicy(
    default=TaskPolicy(aesthetic_src_min=None, aesthetic_tgt_min=None, aesthetic_max_diff=None),
    tasks={
        "remove": TaskPolicy(verify_removed_src_min=0.5, verify_removed_tgt_max=0.2),
        "add": TaskPolicy(verify_added_tgt_min=0.5, verify_added_src_max=0.2),
        "replace": TaskPolicy(verify_added_tgt_min=0.5, verify_removed_tgt_max=0.2),
    },
)
GREY = grey()
RED, BLUE = with_square(GREY, "red"), with_square(GREY, "blue")
MASK = square_mask(GREY.shape[:2])
REPLACE = {"source_object": "red square", "target_object": "blue square"}


@pytest.fixture(scope="module")
def verifier(tmp_path_factory) -> ObjectVerifier:
    folder = tiny_owlv2(tmp_path_factory.mktemp("owl") / "tiny-owlv2")
    loaded = ObjectVerifier.from_config(VerifierConfig(model=str(folder), device="cpu", batch_size=3))
    assert type(loaded.model).__name__ == "Owlv2ForObjectDetection"
    assert type(loaded.processor).__name__ == "Owlv2Processor"
    return loaded


@pytest.mark.parametrize(
    ("task", "extra", "source", "target", "outcome"),
    [
        ("remove", {"phrase": "the red square"}, RED, GREY, None),
        ("remove", {"phrase": "the red square"}, RED, RED, "object_still_present"),
        ("remove", {"phrase": "the red square"}, GREY, GREY, "object_missing_in_source"),
        ("remove", {"phrase": "the red square"}, BLUE, GREY, "object_missing_in_source"),
        ("add", {"phrase": "a red square"}, GREY, RED, None),
        ("add", {"phrase": "a red square"}, GREY, GREY, "object_missing_in_target"),
        ("add", {"phrase": "a red square"}, RED, RED, "object_already_present"),
        ("replace", REPLACE, RED, BLUE, None),
        ("replace", REPLACE, RED, GREY, "object_missing_in_target"),
        ("replace", REPLACE, RED, RED, "object_still_present"),
        ("replace", REPLACE, RED, with_square(BLUE, "red", top=14, left=34, size=12), "object_still_present"),
    ],
)
def test_verifier_checks_drop_with_the_reason_of_the_failed_check(
    verifier, task, extra, source, target, outcome
):
    (found,) = verifier.verify([VerifyItem("k", task, extra, source, target, MASK)])
    assert found.error is None
    verdict = evaluate(POLICY, task, {k: v for k, v in found.scores.items() if not math.isnan(v)})
    assert verdict.reason == outcome, found.scores


def test_verifier_looks_only_inside_the_edited_region(verifier):
    elsewhere = square_mask(GREY.shape[:2], top=30, left=0, size=16)  # the square is not in this region
    (found,) = verifier.verify([VerifyItem("k", "remove", {"phrase": "red square"}, RED, GREY, elsewhere)])
    assert found.scores["verify_removed_src"] < 0.2
    (inside,) = verifier.verify([VerifyItem("k", "remove", {"phrase": "red square"}, RED, GREY, MASK)])
    assert inside.scores["verify_removed_src"] > 0.5 and inside.queries == {"removed": "red square"}


def test_verifier_says_why_it_cannot_check_a_pair(verifier):
    items = [
        VerifyItem("web", "web_edit", {}, RED, BLUE, None),
        VerifyItem("nophrase", "remove", {}, RED, GREY, MASK),
        VerifyItem("nomask", "remove", {"phrase": "red square"}, RED, GREY, None),
        VerifyItem("ok", "add", {"phrase": "red square"}, GREY, RED, MASK),
    ]
    found = {v.key: v for v in verifier.verify(items)}
    assert found["web"].error == NO_QUERY and found["nophrase"].error == NO_QUERY
    assert found["nomask"].error == NO_MASK
    assert all(math.isnan(v) for v in found["nomask"].scores.values())
    assert found["ok"].error is None and found["ok"].scores["verify_added_tgt"] > 0.5


def test_object_queries_per_task():
    assert object_queries("remove", {"phrase": " white  car "}).as_dict() == {"removed": "white car"}
    assert object_queries("add", {"phrase": "cup"}).as_dict() == {"added": "cup"}
    replace = object_queries("replace", {"source_object": "cat", "target_object": "dog"})
    assert replace.as_dict() == {"removed": "cat", "added": "dog"}
    same = object_queries("replace", {"source_object": "cat", "target_object": "different cat"})
    assert same.as_dict() == {"added": "cat"}  # the same label: "no longer there" cannot be checked
    assert object_queries("keypoint", {"phrase": "x"}) is None
