"""Photos with planted objects through the grounded removal stage, as a Prefect flow run: the kept
objects become remove and reversed add pairs whose masks cover them, every gate drops the planted case
that should fail it with its reason, and the keys are the same on a rerun and from another folder."""

from __future__ import annotations

import shutil

import numpy as np
from grounded_helpers import CASES, DILATION, SEED, grounded_config, planted_image

from ieiw.flows.config import RunnerConfig
from ieiw.flows.stage_flow import run_stage_flow
from ieiw.pipelines.grounded.stage import GroundedRemovalStage
from ieiw.storage import manifest, runner
from ieiw.storage.shards import iter_samples


def _stage(photos, models, url, **changes) -> GroundedRemovalStage:
    config = grounded_config({"path": str(photos), "dataset": "planted"}, models, **changes)
    return GroundedRemovalStage(config, str(url))


def _phrase_rows(frame, phrase: str):
    """The rows of one phrase (its region is the phrase, ``"<phrase> xN"`` for N instances)."""
    return frame[frame["region_id"].str.fullmatch(rf"{phrase}( x\d+)?")]


def test_planted_objects_become_pairs_and_each_gate_drops_its_case(
    prefect_api, planted, tiny_models, tmp_path
):
    runner.forget_models()
    stage = _stage(planted, tiny_models, tmp_path / "grounded")
    summary = run_stage_flow(stage, RunnerConfig(max_workers=2))
    assert summary.complete and summary.records == len(CASES), f"seed {SEED}: {summary.outcome()}"
    # tagger, detector (shared with the verifier: one model), SAM and LaMa, each loaded once
    assert sum(runner.LOADS.values()) == 4 and set(runner.LOADS.values()) == {1}, runner.LOADS

    frame = manifest.read_manifest(str(tmp_path / "grounded"))
    assert frame["key"].is_unique
    for name, case in CASES.items():
        rows = _phrase_rows(frame[frame["record_id"] == f"planted:{name}.png"], case.phrase)
        if case.outcome == "kept":
            assert sorted(rows["task"]) == ["add", "remove"] and rows["kept"].all(), f"seed {SEED}: {name}"
        else:
            assert list(rows["drop_reason"]) == [case.outcome], (
                f"seed {SEED}: {name}: {rows.to_dict('records')}"
            )
    # the tagger proposed both names for every photo; where the detector saw no such colour, a drop
    blue = _phrase_rows(frame[frame["record_id"] == "planted:red.png"], "blue square")
    assert list(blue["drop_reason"]) == ["low_detector_score"], f"seed {SEED}"
    assert summary.by_task == {"remove": 2, "add": 2}, f"seed {SEED}: {summary.by_task}"

    samples = {s.meta.key: s for s in iter_samples(str(tmp_path / "grounded"))}
    removes = [s for s in samples.values() if s.meta.task == "remove"]
    for sample in removes:
        name = sample.meta.provenance.image_id.removesuffix(".png")
        top, left, height, width = CASES[name].removed
        planted_region = np.zeros(sample.mask.shape, bool)
        planted_region[top : top + height, left : left + width] = True
        grown = np.zeros_like(planted_region)
        grown[
            max(0, top - DILATION - 1) : top + height + DILATION + 1,
            max(0, left - DILATION - 1) : left + width + DILATION + 1,
        ] = True
        mask = sample.mask > 127
        assert mask[planted_region].all() and not mask[~grown].any(), f"seed {SEED}: {name}'s mask"
        assert np.array_equal(sample.source, planted_image(name)), f"seed {SEED}: {name}"
        assert not np.array_equal(sample.target[planted_region], sample.source[planted_region])
        extra = sample.meta.extra
        assert extra["phrase"] == CASES[name].phrase and extra["verify_removed_tgt"] <= 0.05, extra
        assert extra["verify_removed_src"] > 0.5 and extra["detector_score"] > 0.5, extra
        assert sample.meta.instruction_source.startswith("template:remove#")
        assert CASES[name].phrase in sample.meta.instruction
        generator = sample.meta.generator
        assert generator.name == "grounded_removal" and generator.settings["tagger"] == "clip_zero_shot"

        add = next(s for s in samples.values() if s.meta.extra.get("reverse_of") == sample.key)
        assert add.meta.task == "add" and np.array_equal(add.source, sample.target)
        assert np.array_equal(add.target, sample.source) and np.array_equal(add.mask, sample.mask)
        assert add.meta.provenance == sample.meta.provenance

    # a rerun has nothing to do; the same photos in another folder make the same keys
    again = run_stage_flow(_stage(planted, tiny_models, tmp_path / "grounded"), RunnerConfig())
    assert again.skipped or again.records == 0, again.outcome()
    moved = shutil.copytree(planted, tmp_path / "elsewhere" / "copied-photos")
    other = run_stage_flow(_stage(moved, tiny_models, tmp_path / "other"), RunnerConfig())
    assert other.kept == summary.kept, f"seed {SEED}: {other.outcome()}"
    assert set(manifest.read_manifest(str(tmp_path / "other"))["key"]) == set(frame["key"])


def test_an_instruction_names_every_instance_and_overlapping_names_drop(
    prefect_api, planted, tiny_models, tmp_path
):
    """With ``instances: all`` two red squares go together; a second name for the same object (the tiny
    detector reads "red thing" as it reads "red square") is dropped for sharing its mask."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("pair", "red"):
        shutil.copy(planted / f"{name}.png", folder)
    changes = {
        "tagger": {"vocabulary": ["red square", "red thing"]},
        "gates": {"instances": "all", "max_instances": 2},
        "make_add_pairs": True,
    }
    summary = run_stage_flow(_stage(folder, tiny_models, tmp_path / "out", **changes), RunnerConfig())
    assert summary.dropped == {"mask_overlap": 2}, f"seed {SEED}: {summary.outcome()}"
    frame = manifest.read_manifest(str(tmp_path / "out"))
    for name, count in (("pair", 2), ("red", 1)):
        rows = frame[frame["record_id"] == f"planted:{name}.png"]
        kept, dropped = rows[rows["kept"]], rows[~rows["kept"]]
        assert sorted(kept["task"]) == ["add", "remove"] and kept["region_id"].nunique() == 1, f"seed {SEED}"
        assert list(dropped["drop_reason"]) == ["mask_overlap"], f"seed {SEED}: {name}"
        names = {kept["region_id"].iloc[0], dropped["region_id"].iloc[0]}
        suffix = f" x{count}" if count > 1 else ""
        assert names == {f"red square{suffix}", f"red thing{suffix}"}, names
    both = [s for s in iter_samples(str(tmp_path / "out")) if s.meta.extra["instances"] == 2]
    remove = next(s for s in both if s.meta.task == "remove")
    add = next(s for s in both if s.meta.task == "add")
    assert "both red " in remove.meta.instruction and "two red " in add.meta.instruction, (
        remove.meta.instruction,
        add.meta.instruction,
    )
    mask = remove.mask > 127
    assert mask[0:32, 0:32].all() and mask[64:96, 64:96].all(), f"seed {SEED}: both squares masked"
