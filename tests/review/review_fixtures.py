"""Candidate shards in the real on-disk format, with synthetic images a person can tell apart."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ieiw.model.candidate_shards import CandidateHeader, CandidateSet, CandidateSetting, write_candidate_sets
from ieiw.storage.schema import GeneratorInfo, Provenance, SampleMeta, Task, sample_key

COLOURS = [(220, 38, 38), (234, 88, 12), (202, 138, 4), (22, 163, 74), (8, 145, 178), (37, 99, 235),
           (124, 58, 237), (219, 39, 119), (87, 83, 78), (15, 118, 110)]


def labelled_image(colour: tuple[int, int, int], label: str, size: int) -> np.ndarray:
    image = Image.new("RGB", (size, size), colour)
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(250, 250, 250))
    draw.text((size // 2 - 6, size // 2 - 6), label, fill=(0, 0, 0))
    return np.asarray(image)


def source_meta(index: int, dataset: str = "fixture") -> SampleMeta:
    provenance = Provenance(dataset=dataset, image_id=f"img{index:03d}", license="CC-BY-4.0")
    generator = GeneratorInfo(name="fixture", backend="synthetic")
    return SampleMeta(key=sample_key(Task.REMOVE, provenance, generator), task=Task.REMOVE,
                      instruction=f"remove the circle {index}", instruction_source="template#0",
                      provenance=provenance, generator=generator, record_id=f"rec{index}")


def candidate_sets(n_samples: int, n_candidates: int, size: int = 48, dataset: str = "fixture"
                   ) -> list[CandidateSet]:
    sets = []
    for i in range(n_samples):
        meta = source_meta(i, dataset)
        settings = [CandidateSetting(seed=1000 * i + k, text_guidance=5.0 + k % 4 * 2.5,
                                     image_guidance=1.0 + k % 5 * 0.25, steps=10, checkpoint="ckpt/step-100")
                    for k in range(n_candidates)]
        header = CandidateHeader(key=meta.key, instruction=meta.instruction, source_meta=meta,
                                 settings=settings)
        sets.append(CandidateSet(
            header=header, source=labelled_image((120, 120, 120), "S", size),
            candidates=[labelled_image(COLOURS[k % len(COLOURS)], str(k + 1), size)
                        for k in range(n_candidates)],
        ))
    return sets


def write_candidate_shards(directory: str, n_samples: int = 6, n_candidates: int = 8, per_shard: int = 4,
                           size: int = 48, dataset: str = "fixture") -> list[str]:
    sets = candidate_sets(n_samples, n_candidates, size, dataset)
    return write_candidate_sets(sets, directory, max_sets=per_shard)


def write_candidate_stage(url: str, batches: list[list[CandidateSet]]) -> str:
    """Candidate sets committed as a candidates stage folder, one batch (and shard) per list, as
    `ieiw candidates` commits them; more batches may be added later with the same fingerprint."""
    import pyarrow as pa

    from ieiw.model.candidate_shards import candidate_shard
    from ieiw.model.candidates import CANDIDATES_SCHEMA, STAGE
    from ieiw.storage.fingerprint import Fingerprint
    from ieiw.storage.schema import stable_key
    from ieiw.storage.stage_folder import open_stage

    with open_stage(url, Fingerprint(stage=STAGE, settings={"fixture": True})) as writer:
        for sets in batches:
            batch = f"candidates-{stable_key([s.key for s in sets])[:16]}"
            rows = [{"key": s.key, "record_id": s.key, "batch": batch, "shard": f"{batch}.tar",
                     "instruction": s.header.instruction, "candidates": len(s.candidates)} for s in sets]
            writer.commit_files(batch, pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA),
                                {f"shards/{batch}.tar": candidate_shard(sets)})
        writer.finish(schema=CANDIDATES_SCHEMA)
    return url
