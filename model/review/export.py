"""The picks as instruction-tuning shards: (source, instruction, chosen edit), task ``aligned``.

One sample per picked candidate (however many reviewers picked it), written through
:func:`ieiw.storage.commit.commit_batch`, so the curriculum's last stage reads it like any other
stage output. Provenance: the source sample's own provenance (plus its key), and as generator
settings the checkpoint, seed, guidance scales, steps, the candidate's position and the reviewers.
"""

from __future__ import annotations

from collections.abc import Iterator

from ieiw.model.candidates import CandidateIndex, candidate_member
from ieiw.model.review.reports import PickedCandidate
from ieiw.model.review.store import ReviewStore
from ieiw.storage import fs, manifest
from ieiw.storage.commit import BatchReport, batch_name, commit_batch
from ieiw.storage.schema import Drop, GeneratorInfo, Provenance, Result, Sample, SampleMeta, Task, sample_key
from ieiw.storage.shards import ShardSpec

GENERATOR = "human-review"


def aligned_sample(picked: PickedCandidate, index: CandidateIndex) -> Result:
    """The training sample of one picked candidate, or a drop when its images are not in the shards."""
    source_meta = SampleMeta.model_validate(picked.source_meta) if picked.source_meta else None
    if source_meta is not None:
        provenance = source_meta.provenance.model_copy(
            update={"extra": {**source_meta.provenance.extra, "source_key": picked.sample_key}}
        )
    else:
        provenance = Provenance(dataset="review", image_id=picked.sample_key,
                                extra={"source_key": picked.sample_key})
    generator = GeneratorInfo(
        name=GENERATOR, backend="instruct-pix2pix", model=picked.checkpoint or None, seed=picked.seed,
        settings={"text_guidance": picked.text_guidance, "image_guidance": picked.image_guidance,
                  "steps": picked.steps, "candidate": picked.position, "reviewers": list(picked.reviewers),
                  "votes": len(picked.reviewers)},
    )
    key = sample_key(Task.ALIGNED, provenance, generator)
    record_id = f"{picked.sample_key}:{picked.position}"
    try:
        source = index.image(picked.sample_key, "src.png")
        target = index.image(picked.sample_key, candidate_member(picked.position))
    except KeyError:
        return Drop(key=key, reason="candidate_missing", detail=f"{record_id} is not in the candidate shards",
                    record_id=record_id, task=str(Task.ALIGNED), provenance=provenance)
    meta = SampleMeta(
        key=key, task=Task.ALIGNED, instruction=picked.instruction,
        instruction_source=source_meta.instruction_source if source_meta else "",
        provenance=provenance, generator=generator, record_id=record_id,
        pretrain_caption=source_meta.pretrain_caption if source_meta else None,
        extra={"picked_at": picked.first_picked_at.isoformat(), "source_task": str(source_meta.task)
               if source_meta else None},
    )
    return Sample(meta=meta, source=source, target=target)


def export_picks(store: ReviewStore, index: CandidateIndex, out_url: str, min_votes: int = 1,
                 spec: ShardSpec | None = None, overwrite: bool = False) -> BatchReport:
    """Write every candidate picked by ``min_votes`` or more reviewers as one committed batch.

    An export is a snapshot of the review: it goes to a fresh folder, or replaces a previous
    export there with ``overwrite``, so old and new picks never mix in one stage output.
    """
    parts = manifest.part_urls(out_url)
    if parts:
        if not overwrite:
            raise FileExistsError(f"{out_url} already holds an export; pass overwrite or pick a new folder")
        for folder in (manifest.MANIFEST_DIR, manifest.SHARD_DIR):
            filesystem, path = fs.get_fs(fs.join(out_url, folder))
            if filesystem.exists(path):
                filesystem.rm(path, recursive=True)
    picked = store.picked_candidates(min_votes=min_votes)
    name = batch_name("aligned", [f"{p.sample_key}:{p.position}:{','.join(p.reviewers)}" for p in picked])

    def results() -> Iterator[Result]:
        for item in picked:
            yield aligned_sample(item, index)

    return commit_batch(results(), out_url, name, spec or ShardSpec(max_samples=500))
