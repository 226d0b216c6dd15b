import numpy as np
from tiny_lama import save_tiny_lama

from ieiw.pipelines.inpaint import InpaintConfig, build_inpainter
from ieiw.pipelines.inpaint.lama import LamaInpainter
from ieiw.pipelines.instructions.templates import TEMPLATES, a_phrase, render, the_phrase
from ieiw.pipelines.removal import RemovalSettings, removal_stage
from ieiw.pipelines.sources.phrasecut import RegionSettings, iter_records
from ieiw.storage.schema import Drop, Sample, Task


def test_every_record_becomes_a_remove_and_a_reversed_add_pair(phrasecut):
    annotations, images = phrasecut
    records = list(iter_records(annotations, images))
    results = removal_stage(records, build_inpainter(InpaintConfig()), RemovalSettings())
    samples = [r for r in results if isinstance(r, Sample)]
    assert len(samples) == 2 * len(records) and not [r for r in results if isinstance(r, Drop)]
    removes = {s.meta.record_id: s for s in samples if s.meta.task == Task.REMOVE}
    adds = {s.meta.record_id: s for s in samples if s.meta.task == Task.ADD}
    for rid, remove in removes.items():
        add = adds[rid]
        assert np.array_equal(add.source, remove.target) and np.array_equal(add.target, remove.source)
        assert add.meta.extra["reverse_of"] == remove.key
        assert remove.meta.instruction_source.startswith("template:remove#")
        assert add.meta.instruction_source.startswith("template:add#")
        phrase = remove.meta.extra["phrase"]
        assert phrase.split()[-1] in remove.meta.instruction and phrase.split()[-1] in add.meta.instruction
        assert remove.meta.generator.backend == "opencv" and remove.meta.generator.settings["dilation"] == 15
        changed = np.abs(remove.target.astype(int) - remove.source.astype(int)).sum(axis=-1) > 0
        assert changed.any() and not changed[remove.mask == 0].any()


def test_reruns_make_the_same_keys_and_instructions(phrasecut):
    annotations, images = phrasecut
    records = list(iter_records(annotations, images))
    first = removal_stage(records, build_inpainter(InpaintConfig()), RemovalSettings())
    second = removal_stage(records, build_inpainter(InpaintConfig()), RemovalSettings())
    assert [(r.key, r.meta.instruction) for r in first] == [(r.key, r.meta.instruction) for r in second]
    other = removal_stage(
        records, build_inpainter(InpaintConfig()), RemovalSettings(region=RegionSettings(dilation=3))
    )
    assert {r.key for r in first}.isdisjoint({r.key for r in other})


def test_one_failing_image_costs_one_drop_not_the_batch(phrasecut, tmp_path):
    from phrasecut_fixture import write_phrasecut

    small_ann, small_images = phrasecut
    wide_ann, wide_images = write_phrasecut(str(tmp_path / "wide"), n_images=1, size=200, tasks_per_image=1)
    records = list(iter_records(small_ann, small_images))[:3] + list(iter_records(wide_ann, wide_images))
    inpainter = LamaInpainter(save_tiny_lama(str(tmp_path / "l.pt"), fail_wider_than=150))
    results = removal_stage(records, inpainter, RemovalSettings())
    drops = [r for r in results if isinstance(r, Drop)]
    assert [d.reason for d in drops] == ["inpaint_failed"] and "wide input" in drops[0].detail
    assert len([r for r in results if isinstance(r, Sample)]) == 6


def test_an_inpainter_that_changes_nothing_is_caught(phrasecut):
    annotations, images = phrasecut
    records = list(iter_records(annotations, images))[:2]
    results = removal_stage(records, build_inpainter(InpaintConfig()), RemovalSettings(min_change=1e9))
    assert {r.reason for r in results} == {"inpaint_no_change"}


def test_templates_are_plentiful_and_grammatical():
    assert len(TEMPLATES["remove"]) >= 10 and len(TEMPLATES["add"]) >= 10
    assert the_phrase("white cup") == "the white cup" and the_phrase("the cup") == "the cup"
    assert (
        a_phrase("apple") == "an apple"
        and a_phrase("the cup") == "a cup"
        and a_phrase("two dogs") == "two dogs"
    )
    assert a_phrase("trees") == "trees"
    texts = {render("remove", str(i), phrase="red car")[0] for i in range(200)}
    assert len(texts) >= 8 and all("the red car" in t for t in texts)
