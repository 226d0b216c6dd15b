"""Multi-turn removal sessions: successive removals on one image, each turn a sample with its own mask and
instruction, the whole session as one more, the add session as the whole session reversed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from phrasecut_fixture import COLOURS, shape_polygon
from PIL import Image, ImageDraw

from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
from ieiw.pipelines.removal import RemovalSettings, SessionSettings, removal_stage
from ieiw.pipelines.sources.phrasecut import PhraseCutRecord, PhraseCutSession, group_sessions, iter_records
from ieiw.storage.schema import Drop, Sample, SampleMeta
from ieiw.storage.shards import ShardWriter, iter_samples

PLACES = {"red square": (0.25, 0.3), "blue disc": (0.7, 0.3), "green triangle": (0.5, 0.72)}


def write_scenes(root: str, n_images: int = 2, size: int = 96, duplicate: bool = False) -> tuple[str, str]:
    """Images with three shapes each and a task per shape (plus, with ``duplicate``, the red square named a
    second time), in the real PhraseCut format; tasks of the images are interleaved in the file."""
    images = os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    rng = np.random.default_rng(0)
    per_image: list[list[dict]] = []
    for image_id in range(1, n_images + 1):
        base = rng.integers(100, 150, size=(size, size, 3)).astype(np.uint8)
        picture = Image.fromarray(base)
        draw = ImageDraw.Draw(picture)
        tasks = []
        for n, (kind, (x, y)) in enumerate(PLACES.items()):
            polygon = shape_polygon(kind, size * x, size * y, size * 0.12)
            draw.polygon([tuple(p) for p in polygon], fill=COLOURS[kind])
            tasks.append(
                {
                    "task_id": f"{image_id}__{n}",
                    "image_id": image_id,
                    "phrase": kind,
                    "Polygons": [[polygon]],
                    "ann_ids": [10 * image_id + n],
                }
            )
        if duplicate:
            again = dict(tasks[0], task_id=f"{image_id}__9", phrase="square on the left", ann_ids=[])
            tasks.insert(1, again)
        picture.save(os.path.join(images, f"{image_id}.jpg"), format="PNG")  # lossless, under VG's name
        per_image.append(tasks)
    interleaved = [t for group in zip(*per_image, strict=True) for t in group]
    path = os.path.join(root, "refer_test.json")
    with open(path, "w") as handle:
        json.dump(interleaved, handle)
    return path, images


def _settings(**sessions) -> RemovalSettings:
    return RemovalSettings(sessions=SessionSettings(**sessions))


def _samples(results) -> list[Sample]:
    return [r for r in results if isinstance(r, Sample)]


def test_group_sessions_gathers_each_image_in_a_bounded_window(tmp_path):
    annotations, images = write_scenes(str(tmp_path), n_images=3)
    records = list(iter_records(annotations, images))
    grouped = list(group_sessions(records, max_turns=2, window=8))
    sessions = [g for g in grouped if isinstance(g, PhraseCutSession)]
    singles = [g for g in grouped if isinstance(g, PhraseCutRecord)]
    assert [len(s.records) for s in sessions] == [2, 2, 2] and len(singles) == 3  # 3 phrases, 2 turns at most
    assert all(len({r.image_id for r in s.records}) == 1 for s in sessions)
    assert sorted(
        r.task_id for g in grouped for r in (g.records if isinstance(g, PhraseCutSession) else [g])
    ) == sorted(r.task_id for r in records)
    assert [g.record_id for g in group_sessions(records, 2, 8)] == [g.record_id for g in grouped]  # stable
    # a window of one open image: interleaved images cannot be gathered, every phrase stays alone
    assert all(isinstance(g, PhraseCutRecord) for g in group_sessions(records, 3, window=1))
    drop = Drop(key="k", reason="bad_annotation")
    assert list(group_sessions([drop], 3)) == [drop]
    with pytest.raises(ValueError):
        list(group_sessions(records, 1))


def test_a_session_removes_one_object_after_another(tmp_path):
    annotations, images = write_scenes(str(tmp_path), n_images=2)
    sessions = [g for g in group_sessions(iter_records(annotations, images), 3)]
    assert all(isinstance(g, PhraseCutSession) for g in sessions) and len(sessions) == 2
    results = removal_stage(sessions, build_inpainter(InpaintConfig()), _settings())
    assert not [r for r in results if isinstance(r, Drop)]
    samples = _samples(results)
    assert len(samples) == 2 * (3 + 1) * 2  # per image: 3 turns and the whole, remove and add
    assert len({s.key for s in samples}) == len(samples)
    for session in sessions:
        mine = [s for s in samples if s.meta.record_id == session.record_id]
        photo = np.asarray(Image.open(session.records[0].image_path).convert("RGB"))
        removes = sorted((s for s in mine if s.meta.task == "remove"), key=lambda s: s.meta.turn)
        adds = sorted((s for s in mine if s.meta.task == "add"), key=lambda s: s.meta.turn)
        assert [s.meta.turn for s in removes] == [0, 1, 2, 3] == [s.meta.turn for s in adds]
        whole, turns = removes[0], removes[1:]
        assert len({s.meta.session_id for s in removes}) == 1 and removes[0].meta.session_id
        assert {s.meta.session_id for s in adds} != {whole.meta.session_id}
        # turn 1 starts from the photo, every later turn from the turn before it
        np.testing.assert_array_equal(turns[0].source, photo)
        for before, after in zip(turns, turns[1:]):
            np.testing.assert_array_equal(after.source, before.target)
        # each turn keeps its own mask and instruction, and changes only inside its mask
        assert len({s.mask.tobytes() for s in turns}) == 3
        for turn, record in zip(turns, session.records, strict=True):
            phrase = record.phrase
            assert phrase in turn.meta.instruction and turn.meta.extra["phrase"] == phrase
            outside = turn.mask == 0
            np.testing.assert_array_equal(turn.source[outside], turn.target[outside])
            assert turn.meta.provenance.region_id == record.task_id
        # the whole session: the photo, every phrase, the last result, the union of the masks
        np.testing.assert_array_equal(whole.source, photo)
        np.testing.assert_array_equal(whole.target, turns[-1].target)
        assert all(p in whole.meta.instruction for p in PLACES) and " and " in whole.meta.instruction
        np.testing.assert_array_equal(whole.mask, np.maximum.reduce([t.mask for t in turns]))
        assert whole.meta.provenance.region_id == "+".join(r.task_id for r in session.records)
        # the add session is the remove session reversed: its turn 1 puts back what was removed last
        for j, add in enumerate(adds[1:], 1):
            undone = turns[3 - j]
            np.testing.assert_array_equal(add.source, undone.target)
            np.testing.assert_array_equal(add.target, undone.source)
            assert add.meta.extra["reverse_of"] == undone.key
            assert undone.meta.extra["phrase"] in add.meta.instruction
        np.testing.assert_array_equal(adds[0].source, turns[-1].target)
        np.testing.assert_array_equal(adds[0].target, photo)


def test_session_fields_survive_the_shards_and_plain_samples_keep_theirs(tmp_path):
    annotations, images = write_scenes(str(tmp_path / "data"), n_images=1)
    sessions = list(group_sessions(iter_records(annotations, images), 3))
    samples = _samples(
        removal_stage(sessions, build_inpainter(InpaintConfig()), _settings(whole_session=False))
    )
    assert sorted(s.meta.turn for s in samples) == [1, 1, 2, 2, 3, 3]  # no whole-session sample
    with ShardWriter(str(tmp_path / "shards"), prefix="s") as writer:
        for sample in samples:
            writer.write(sample)
    back = {s.key: s.meta for s in iter_samples(str(tmp_path / "shards"))}
    for sample in samples:
        assert (back[sample.key].session_id, back[sample.key].turn) == (
            sample.meta.session_id,
            sample.meta.turn,
        )
    plain = SampleMeta.model_validate(
        json.loads(samples[0].meta.model_copy(update={"session_id": "", "turn": -1}).to_json_bytes())
    )
    record = plain.to_record()
    assert record["session_id"] == "" and record["turn"] == -1 and plain.turn == -1


def test_an_object_named_twice_is_an_ordinary_pair_with_its_ordinary_key(tmp_path):
    annotations, images = write_scenes(str(tmp_path), n_images=1, duplicate=True)
    records = list(iter_records(annotations, images))
    session = next(g for g in group_sessions(records, 4) if isinstance(g, PhraseCutSession))
    assert len(session.records) == 4
    inpainter = build_inpainter(InpaintConfig())
    samples = _samples(removal_stage([session], inpainter, _settings(max_turns=4)))
    in_session = [s for s in samples if s.meta.session_id]
    assert {s.meta.turn for s in in_session} == {0, 1, 2, 3}  # the duplicate is not a turn
    alone = [s for s in samples if not s.meta.session_id]
    assert {s.meta.task for s in alone} == {"remove", "add"} and all(s.meta.turn == -1 for s in alone)
    duplicate = next(r for r in records if r.task_id.endswith("__9"))
    ordinary = _samples(removal_stage([duplicate], inpainter, RemovalSettings()))
    assert {s.key for s in alone} == {s.key for s in ordinary}  # the key a build without sessions makes
    assert all(s.meta.record_id == session.record_id for s in samples)  # a resumed build sees it done
    # a session left with one turn (its other phrase names the same object) is two ordinary pairs
    pair = next(g for g in group_sessions(records, 2) if isinstance(g, PhraseCutSession))
    assert [r.task_id for r in pair.records] == ["1__0", "1__9"]
    made = _samples(removal_stage([pair], inpainter, _settings(max_turns=2)))
    expected = _samples(removal_stage(pair.records, inpainter, RemovalSettings()))
    assert {s.key for s in made} == {s.key for s in expected} and not any(s.meta.session_id for s in made)


def test_a_turn_that_changes_nothing_is_dropped_and_the_session_goes_on(tmp_path):
    annotations, images = write_scenes(str(tmp_path), n_images=1)
    session = next(iter(group_sessions(iter_records(annotations, images), 3)))
    settings = RemovalSettings(min_change=10_000.0, sessions=SessionSettings())  # no inpainting is enough
    results = removal_stage([session], build_inpainter(InpaintConfig()), settings)
    assert not _samples(results)
    assert [r.reason for r in results] == ["inpaint_no_change"] * 3
    assert {r.record_id for r in results} == {session.record_id}


def test_a_build_with_sessions_records_them_and_counts_them_in_the_data_card(prefect_api, tmp_path):
    from pathlib import Path

    from ieiw.flows.build import ieiw_build
    from ieiw.flows.config import BuildConfig
    from ieiw.storage import manifest
    from ieiw.storage.stage_folder import StageChanged, read_record

    annotations, images = write_scenes(str(tmp_path / "data"), n_images=2)

    def config(**removal) -> BuildConfig:
        section = {"source": {"annotations": [annotations], "images": images}, "batch_size": 4, **removal}
        return BuildConfig.model_validate(
            {"name": "sessions", "output": str(tmp_path / "out"), "removal": section}
        )

    result = ieiw_build(config(sessions={"max_turns": 3}))
    stage = str(tmp_path / "out" / "removal")
    frame = manifest.read_manifest(stage)
    kept = frame[frame["kept"]]
    assert len(kept) == 16 and kept["session_id"].nunique() == 4  # 2 images: a remove and an add session each
    assert sorted(kept["turn"].unique()) == [0, 1, 2, 3]
    assert read_record(stage)["fingerprint"]["settings"]["sessions"]["max_turns"] == 3
    card = Path(result["data_card"]).read_text()
    assert "## Multi-turn sessions" in card
    assert (
        "| removal | remove | 3 | 2 | not filtered |" in card
        and "| removal | add | 3 | 2 | not filtered |" in card
    )
    with pytest.raises(StageChanged) as changed:  # the option is part of the removal stage's fingerprint
        ieiw_build(config())
    assert "removal.sessions" in str(changed.value)
    plain = tmp_path / "plain"
    ieiw_build(config().model_copy(update={"output": str(plain)}))
    assert read_record(str(plain / "removal"))["fingerprint"]["settings"]["sessions"] is None
    assert manifest.read_manifest(str(plain / "removal"))["session_id"].isna().all()
