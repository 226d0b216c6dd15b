"""Multi-turn sessions of the grounded generator, through the stage and its runner: two objects found in
one photo get a mask each and are removed one after another (turn 2 from turn 1's result), the whole
session is one more sample, the add session reverses it; a turn the verifier rejects is dropped and the
session goes on; an object that is no turn keeps its ordinary key."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from grounded_helpers import (
    BLUE_AT,
    DILATION,
    RED_AT,
    SESSION_SEED,
    duo_image,
    grounded_config,
    write_session_photos,
)

from ieiw.pipelines.grounded.config import GroundedRemovalConfig
from ieiw.pipelines.grounded.stage import GroundedRemovalStage
from ieiw.storage import manifest
from ieiw.storage.runner import RunOptions, ThreadExecutor, run_stage
from ieiw.storage.shards import iter_samples


def _region(where) -> np.ndarray:
    top, left, height, width = where
    region = np.zeros((128, 128), bool)
    region[top : top + height, left : left + width] = True
    return region


def _run(config: GroundedRemovalConfig, url):
    with ThreadExecutor(1) as executor:
        summary = run_stage(GroundedRemovalStage(config, str(url)), executor, RunOptions())
    assert summary.complete, summary.outcome()
    return summary, manifest.read_manifest(str(url)), list(iter_samples(str(url)))


def test_two_objects_of_a_photo_are_removed_one_after_another(tiny_models, tmp_path):
    photos = write_session_photos(tmp_path / "photos")
    config = grounded_config(
        {"path": str(photos), "dataset": "planted"}, tiny_models, sessions={"max_turns": 3}
    )
    summary, frame, samples = _run(config, tmp_path / "sessions")
    # duo: 2 turns and the whole, removed and added back; half and red: an ordinary pair each
    assert summary.by_task == {"remove": 5, "add": 5}, f"seed {SESSION_SEED}: {summary.outcome()}"
    assert summary.dropped == {"low_detector_score": 1, "object_still_present": 1}, summary.outcome()

    duo = [s for s in samples if s.meta.record_id == "planted:duo.png"]
    assert len(duo) == 6 and all(s.meta.session_id for s in duo), f"seed {SESSION_SEED}"
    removes = sorted((s for s in duo if s.meta.task == "remove"), key=lambda s: s.meta.turn)
    adds = sorted((s for s in duo if s.meta.task == "add"), key=lambda s: s.meta.turn)
    assert [s.meta.turn for s in removes] == [0, 1, 2] == [s.meta.turn for s in adds]
    whole, first, second = removes
    assert len({s.meta.session_id for s in removes}) == 1 and adds[0].meta.session_id != whole.meta.session_id
    photo = duo_image()
    np.testing.assert_array_equal(first.source, photo)
    np.testing.assert_array_equal(second.source, first.target)  # turn 2 starts from turn 1's result
    # each turn's own mask covers its object and not the other one
    planted = {"red square": _region(RED_AT), "blue square": _region(BLUE_AT)}
    for turn, other in ((first, second), (second, first)):
        mask, phrase = turn.mask > 127, turn.meta.extra["phrase"]
        assert mask[planted[phrase]].all(), f"seed {SESSION_SEED}: turn {turn.meta.turn} misses its {phrase}"
        assert not mask[planted[other.meta.extra["phrase"]]].any(), (
            f"seed {SESSION_SEED}: two objects, one mask"
        )
        assert np.count_nonzero(mask) <= (32 + 2 * DILATION + 2) ** 2, f"seed {SESSION_SEED}"
        assert phrase in turn.meta.instruction and turn.meta.extra["verify_removed_tgt"] <= 0.05
        np.testing.assert_array_equal(turn.source[~mask], turn.target[~mask])
    # the object of turn 2 is still in turn 1's result; after turn 2 neither is
    later = planted[second.meta.extra["phrase"]]
    np.testing.assert_array_equal(first.target[later], photo[later])
    assert first.meta.extra["phrase"] != second.meta.extra["phrase"]
    assert first.meta.extra["detector_score"] >= second.meta.extra["detector_score"]  # most confident first
    # the whole session: the photo, both objects named, the last result, the union of the masks
    np.testing.assert_array_equal(whole.source, photo)
    np.testing.assert_array_equal(whole.target, second.target)
    np.testing.assert_array_equal(whole.mask, np.maximum(first.mask, second.mask))
    assert "red square" in whole.meta.instruction and "blue square" in whole.meta.instruction
    order = [first.meta.extra["phrase"], second.meta.extra["phrase"]]
    assert whole.meta.provenance.region_id == "+".join(order) and whole.meta.extra["session_phrases"] == order
    assert whole.meta.generator.settings["session"]["max_turns"] == 3
    # the add session is the remove session reversed: its turn 1 puts back what was removed last
    np.testing.assert_array_equal(adds[1].source, second.target)
    np.testing.assert_array_equal(adds[1].target, second.source)
    assert adds[1].meta.extra["reverse_of"] == second.key and adds[2].meta.extra["reverse_of"] == first.key
    np.testing.assert_array_equal(adds[0].source, second.target)
    np.testing.assert_array_equal(adds[0].target, photo)

    # the manifest carries the session fields; the half photo's rejected turn is a drop of the photo
    rows = frame[frame["record_id"] == "planted:duo.png"]
    assert (
        rows["kept"].all()
        and sorted(rows["turn"]) == [0, 0, 1, 1, 2, 2]
        and rows["session_id"].nunique() == 2
    )
    half = frame[frame["record_id"] == "planted:half.png"]
    assert list(half.loc[~half["kept"], "drop_reason"]) == ["object_still_present"], f"seed {SESSION_SEED}"
    assert list(half.loc[~half["kept"], "region_id"]) == ["blue square"]
    alone = [s for s in samples if s.meta.record_id in ("planted:half.png", "planted:red.png")]
    assert (
        len(alone) == 4 and not any(s.meta.session_id for s in alone) and {s.meta.turn for s in alone} == {-1}
    )

    # the same photos elsewhere make the same keys; without sessions, an object alone keeps its key
    moved = shutil.copytree(photos, tmp_path / "elsewhere" / "photos")
    config = grounded_config(
        {"path": str(moved), "dataset": "planted"}, tiny_models, sessions={"max_turns": 3}
    )
    assert set(_run(config, tmp_path / "again")[1]["key"]) == set(frame["key"]), f"seed {SESSION_SEED}"
    plain = grounded_config({"path": str(moved), "dataset": "planted"}, tiny_models)
    plain_frame = _run(plain, tmp_path / "plain")[1]
    assert set(plain_frame.loc[plain_frame["kept"], "key"]) >= {s.key for s in alone}, f"seed {SESSION_SEED}"


@pytest.mark.parametrize("sessions", [None, {"max_turns": 2}])
def test_the_plan_counts_session_samples(tiny_models, tmp_path, sessions):
    config = grounded_config({"path": str(tmp_path)}, tiny_models, sessions=sessions, tagger={"top_k": 5})
    stage = GroundedRemovalStage(config, "unused")
    # five objects a photo: two sessions of two (each with its whole) and one alone, each reversed
    assert stage.samples_made(10) == 10 * (5 + (2 if sessions else 0)) * 2
