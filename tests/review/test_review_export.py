"""Export of the picks as `aligned` instruction-tuning shards, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest

from ieiw.model.candidate_shards import CandidateIndex
from ieiw.model.review.export import ExportExists, export_picks
from ieiw.storage import manifest
from ieiw.storage.schema import Task
from ieiw.storage.shards import iter_samples
from ieiw.storage.stage_folder import recorded_fingerprint


def review_some(store) -> dict[str, list[int]]:
    """alice and bob review the first two samples they share; returns the picked positions by sample."""
    people = {name: store.reviewer_by_token(store.add_reviewer(name)) for name in ("alice", "bob")}
    store.assign(per_sample=2)
    queue = [q["key"] for q in store.queue(people["alice"].id)]
    keys = [queue[0], queue[4], queue[1]]  # the fifth sample lies in the second candidate shard
    plan = {"alice": {keys[0]: [0, 3], keys[1]: [], keys[2]: [5]}, "bob": {keys[0]: [3], keys[1]: [2]}}
    for name, samples in plan.items():
        person = people[name]
        for key, positions in samples.items():
            ids = [c["id"] for c in store.sample_view(person.id, key)["candidates"]]
            for position in positions:
                store.add_pick(person.id, key, ids[position])
            store.finish(person.id, key, "done" if key != keys[2] else "skipped")
    return {keys[0]: [0, 3], keys[1]: [2]}  # keys[2] was skipped: out of the export


def test_export_writes_aligned_shards_with_provenance(store, candidate_index, tmp_path):
    expected = review_some(store)
    out = str(tmp_path / "aligned")
    report = export_picks(store, candidate_index, out)
    assert report.kept == 3 and not report.dropped and report.records == 3 and report.complete
    samples = list(iter_samples([f"{out}/shards"]))
    assert sorted((s.meta.provenance.extra["source_key"], s.meta.generator.settings["candidate"])
                  for s in samples) == sorted((k, p) for k, ps in expected.items() for p in ps)
    for sample in samples:
        meta = sample.meta
        source_key, position = meta.provenance.extra["source_key"], meta.generator.settings["candidate"]
        header = candidate_index.headers[source_key]
        setting = header.settings[position]
        assert meta.task == Task.ALIGNED and meta.instruction == header.instruction
        assert meta.provenance.dataset == "fixture" and meta.provenance.license == "CC-BY-4.0"
        assert meta.generator.model == "ckpt/step-100" and meta.generator.seed == setting.seed
        assert meta.generator.settings["text_guidance"] == setting.text_guidance
        assert meta.generator.settings["image_guidance"] == setting.image_guidance
        assert np.array_equal(sample.target, candidate_index.image(source_key, f"cand_{position:02d}.png"))
        assert np.array_equal(sample.source, candidate_index.image(source_key, "src.png"))
        assert meta.instruction_source == "template#0" and meta.extra["source_task"] == "remove"
    votes = {s.meta.generator.settings["candidate"]: s.meta.generator.settings["reviewers"] for s in samples
             if s.meta.provenance.extra["source_key"] == next(iter(expected))}
    assert votes == {0: ["alice"], 3: ["alice", "bob"]}
    frame = manifest.read_manifest(out)
    assert len(frame) == 3 and frame["kept"].all() and set(frame["task"]) == {"aligned"}

    keys = sorted(s.key for s in samples)
    again = export_picks(store, candidate_index, out)  # the same picks: nothing to do
    assert again.batches == 0 and again.records == 0 and again.records_committed_before == 3
    assert again.extra["held"] == 3
    assert sorted(s.key for s in iter_samples([out])) == keys
    with pytest.raises(ExportExists, match="min_votes: 1 -> 2"):
        export_picks(store, candidate_index, out, min_votes=2)
    assert sorted(s.key for s in iter_samples([out])) == keys  # refused before any change
    agreed = export_picks(store, candidate_index, out, min_votes=2, overwrite=True)
    assert agreed.kept == 1 and len(manifest.read_manifest(out)) == 1
    assert len(list(iter_samples([out]))) == 1
    assert recorded_fingerprint(out).settings["min_votes"] == 2


def test_picks_missing_from_the_shards_are_dropped_with_a_reason(store, candidate_dir, tmp_path):
    expected = review_some(store)
    first_shard_only = CandidateIndex.build(f"{candidate_dir}/candidates-0000.tar")
    report = export_picks(store, first_shard_only, str(tmp_path / "partial"))
    assert sum(len(p) for k, p in expected.items() if k not in first_shard_only) == 1
    assert report.kept == 2 and dict(report.dropped) == {"candidate_missing": 1}
    assert report.records == 3 and report.extra["held_dropped"] == {"candidate_missing": 1}
