"""The picks as instruction-tuning shards: (source, instruction, chosen edit), task ``aligned``.

One sample per picked candidate (however many reviewers picked it), committed as one batch of a
stage folder (:mod:`ieiw.storage.stage_folder`), so the curriculum's last stage reads it like any
other stage output. Provenance: the source sample's own provenance (plus its key), and as generator
settings the checkpoint (its identity by content, as the candidates recorded it), seed, guidance
scales, steps, the candidate's position and the reviewers.

The export's fingerprint (:func:`export_fingerprint`) holds the candidates' identity, the picks
themselves, ``min_votes`` and the shard encoding: exporting the same picks again does nothing, and
other picks or settings replace a previous export only when asked (``overwrite``).
"""

from __future__ import annotations

from collections.abc import Iterator

from ieiw.model.candidate_shards import CandidateIndex, candidate_member
from ieiw.model.review.reports import PickedCandidate
from ieiw.model.review.store import ReviewStore
from ieiw.storage.commit import BatchReport, batch_name, committed_batch_report
from ieiw.storage.fingerprint import Fingerprint
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
from ieiw.storage.stage_folder import StageChanged, open_stage

STAGE = "review_export"

GENERATOR = "human-review"


def aligned_sample(picked: PickedCandidate, index: CandidateIndex) -> Result:
    """The training sample of one picked candidate, or a drop when its images are not in the shards."""
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
    try:
        source = index.image(picked.sample_key, "src.png")
        target = index.image(picked.sample_key, candidate_member(picked.position))
    except KeyError:
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
    return Sample(meta=meta, source=source, target=target)


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


def export_fingerprint(
    index: CandidateIndex, picked: list[PickedCandidate], min_votes: int, spec: ShardSpec
) -> Fingerprint:
    return Fingerprint(
        stage=STAGE,
        settings={
            "min_votes": int(min_votes),
            "shards": spec.model_dump(mode="json", include={"image_format", "jpeg_quality"}),
        },
        upstream={**index.identity(), "picks": f"picks:{picks_digest(picked)}"},
    )


def export_picks(
    store: ReviewStore,
    index: CandidateIndex,
    out_url: str,
    min_votes: int = 1,
    spec: ShardSpec | None = None,
    overwrite: bool = False,
) -> BatchReport:
    """Write every candidate picked by ``min_votes`` or more reviewers as one committed batch.

    An export is a snapshot of the review: the same picks exported again change nothing (the report
    says ``skipped``); other picks or settings raise :class:`ExportExists` unless ``overwrite``, which
    replaces the previous export, so old and new picks never mix in one stage output.
    """
    spec = spec or ShardSpec(max_samples=500)
    picked = store.picked_candidates(min_votes=min_votes)
    fingerprint = export_fingerprint(index, picked, min_votes, spec)
    name = batch_name("aligned", [f"{p.sample_key}:{p.position}:{','.join(p.reviewers)}" for p in picked])
    try:
        writer = open_stage(out_url, fingerprint, rebuild="changed" if overwrite else "no")
        with writer:
            if name in writer.committed_batches():
                return committed_batch_report(out_url, name)

            def results() -> Iterator[Result]:
                for item in picked:
                    yield aligned_sample(item, index)

            report = writer.commit(name, results(), spec)
            writer.finish({"kept": report.kept, "picks": len(picked), "min_votes": min_votes})
            return report
    except StageChanged as changed:
        lines = "\n".join(f"  {c}" for c in changed.changes)
        raise ExportExists(
            f"{out_url} already holds an export of other picks or settings:\n{lines}\n"
            "pass overwrite (--overwrite) to replace it, or pick a new folder"
        ) from changed
