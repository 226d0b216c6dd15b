"""The picks as instruction-tuning shards: (source, instruction, chosen edit), task ``aligned``.

One sample per picked candidate (however many reviewers picked it). :class:`ReviewExportStage` is a
``samples`` stage run by the one runner: its records are the picks in the review's order (``<sample
key>:<position>`` is the record id), and its stage folder is read by the curriculum's last stage like
any other stage output. Provenance: the source sample's own provenance (plus its key), and as generator
settings the checkpoint (its identity by content, as the candidates recorded it), seed, guidance scales,
steps, the candidate's position and the reviewers.

The export's fingerprint holds the candidates' identity, the picks themselves, ``min_votes`` and the
shard encoding: exporting the same picks again does nothing, and other picks or settings replace a
previous export only when asked (``overwrite``).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ieiw.model.candidate_shards import CandidateIndex, MemberLocation, candidate_member, read_member
from ieiw.model.review.reports import PickedCandidate
from ieiw.model.review.store import ReviewStore
from ieiw.storage import manifest
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.images import decode_image
from ieiw.storage.runner import RunOptions, StageSummary, ThreadExecutor, run_stage
from ieiw.storage.schema import (
    Drop,
    GeneratorInfo,
    Provenance,
    Result,
    Sample,
    SampleMeta,
    Task,
    sample_key,
    stable_key,
)
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage import Stage
from ieiw.storage.stage_folder import StageChanged

STAGE = "review_export"

GENERATOR = "human-review"


def aligned_sample(picked: PickedCandidate, source: bytes | None, target: bytes | None) -> Result:
    """The training sample of one picked candidate (its source and edit as encoded in the candidate
    shards), or a drop when they are not there."""
    source_meta = SampleMeta.model_validate(picked.source_meta) if picked.source_meta else None
    if source_meta is not None:
        provenance = source_meta.provenance.model_copy(
            update={"extra": {**source_meta.provenance.extra, "source_key": picked.sample_key}}
        )
    else:
        provenance = Provenance(
            dataset="review", image_id=picked.sample_key, extra={"source_key": picked.sample_key}
        )
    generator = GeneratorInfo(
        name=GENERATOR,
        backend="instruct-pix2pix",
        model=picked.checkpoint or None,
        seed=picked.seed,
        settings={
            "text_guidance": picked.text_guidance,
            "image_guidance": picked.image_guidance,
            "steps": picked.steps,
            "candidate": picked.position,
            "reviewers": list(picked.reviewers),
            "votes": len(picked.reviewers),
        },
    )
    key = sample_key(Task.ALIGNED, provenance, generator)
    record_id = f"{picked.sample_key}:{picked.position}"
    if source is None or target is None:
        return Drop(
            key=key,
            reason="candidate_missing",
            detail=f"{record_id} is not in the candidate shards",
            record_id=record_id,
            task=str(Task.ALIGNED),
            provenance=provenance,
        )
    meta = SampleMeta(
        key=key,
        task=Task.ALIGNED,
        instruction=picked.instruction,
        instruction_source=source_meta.instruction_source if source_meta else "",
        provenance=provenance,
        generator=generator,
        record_id=record_id,
        pretrain_caption=source_meta.pretrain_caption if source_meta else None,
        extra={
            "picked_at": picked.first_picked_at.isoformat(),
            "source_task": str(source_meta.task) if source_meta else None,
        },
    )
    return Sample(meta=meta, source=decode_image(source), target=decode_image(target))


class ExportExists(FileExistsError):
    """The output folder holds an export of other picks or settings."""


def picks_digest(picked: list[PickedCandidate]) -> str:
    """Everything of the picks that reaches the exported samples."""
    return stable_key(
        [
            [p.sample_key, p.position, list(p.reviewers), p.first_picked_at.isoformat(), p.checkpoint]
            for p in sorted(picked, key=lambda p: (p.sample_key, p.position))
        ]
    )


class ExportConfig(BaseModel):
    """The settings of an export that shape it (the picks and the candidates are its input)."""

    model_config = ConfigDict(extra="forbid")

    min_votes: int = Field(default=1, ge=1)  # reviewers who picked a candidate


def read_located(location: MemberLocation | None) -> bytes | None:
    return read_member(location) if location is not None else None


def held(stage_url: str) -> dict[str, Any]:
    """What an export stage holds: its samples and its drops by reason (for a rerun with nothing to do)."""
    table = manifest.read_table(stage_url, columns=["kept", "drop_reason"]).to_pylist()
    dropped = Counter(row["drop_reason"] for row in table if not row["kept"])
    return {"held": sum(bool(row["kept"]) for row in table), "held_dropped": dict(sorted(dropped.items()))}


@dataclass(frozen=True)
class PickRecord:
    """One picked candidate, and where its source and edit lie."""

    record_id: str
    picked: PickedCandidate
    source: MemberLocation | None
    target: MemberLocation | None


class CandidateExportBase(Stage):
    """A stage that exports chosen candidates (the picks, preference pairs): it reads the candidates'
    index where it is planned and keeps only their identity and sources to travel to workers."""

    def __init__(self, index: CandidateIndex, url: str, spec: ShardSpec) -> None:
        super().__init__(url, spec.max_samples, spec)
        self.candidates = index.identity()
        self.sources = list(index.sources)
        self._index: CandidateIndex | None = index  # read where the stage is planned; never sent along

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None}

    def index(self) -> CandidateIndex:
        """The candidates' index: the one read where the stage was planned, or read again from its sources."""
        return self._index if self._index is not None else CandidateIndex.build(self.sources)


class ReviewExportStage(CandidateExportBase):
    """The picked candidates as ``aligned`` samples (see the module docstring)."""

    name = STAGE

    def __init__(
        self, index: CandidateIndex, picked: list[PickedCandidate], url: str, min_votes: int, spec: ShardSpec
    ) -> None:
        super().__init__(index, url, spec)
        self.config = ExportConfig(min_votes=min_votes)
        self.picked = picked

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        upstream = {**self.candidates, "picks": f"picks:{picks_digest(self.picked)}"}
        return config_fingerprint(STAGE, self.config, env, upstream=upstream)

    def records(self) -> Iterator[PickRecord]:
        index = self.index()
        for p in self.picked:
            source = index.find(p.sample_key, "src.png")
            target = index.find(p.sample_key, candidate_member(p.position))
            yield PickRecord(f"{p.sample_key}:{p.position}", p, source, target)

    def total(self) -> int:
        return len(self.picked)

    def run(self, records: list[PickRecord], models: Mapping[str, Any]) -> list[Result]:
        return [aligned_sample(r.picked, read_located(r.source), read_located(r.target)) for r in records]

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        return {"picks": len(self.picked), "min_votes": self.config.min_votes, **held(self.url)}


def export_picks(
    store: ReviewStore,
    index: CandidateIndex,
    out_url: str,
    min_votes: int = 1,
    spec: ShardSpec | None = None,
    overwrite: bool = False,
    executor: Any = None,
) -> StageSummary:
    """Write every candidate picked by ``min_votes`` or more reviewers into the stage ``out_url``.

    An export is a snapshot of the review: the same picks exported again change nothing (no batch
    runs; ``extra["held"]`` says what the stage holds); other picks or settings raise
    :class:`ExportExists` unless ``overwrite``, which replaces the previous export, so old and new picks
    never mix in one stage output.
    """
    spec = spec or ShardSpec(max_samples=500)
    stage = ReviewExportStage(index, store.picked_candidates(min_votes=min_votes), out_url, min_votes, spec)
    try:
        with contextlib.ExitStack() as stack:
            if executor is None:
                executor = stack.enter_context(ThreadExecutor(1))
            return run_stage(stage, executor, RunOptions(rebuild="changed" if overwrite else "no"))
    except StageChanged as changed:
        lines = "\n".join(f"  {c}" for c in changed.changes)
        raise ExportExists(
            f"{out_url} already holds an export of other picks or settings:\n{lines}\n"
            "pass overwrite (--overwrite) to replace it, or pick a new folder"
        ) from changed
