"""A synthetic editing task written as real shards: recolour a shape as the instruction says.

Each source image is a flat background with one circle or square in a random colour; the target
is the same image with the shape painted in the colour the instruction names ("make the circle
red"). Written with :class:`ieiw.storage.shards.ShardWriter`, exactly as generators write shards.
"""

from __future__ import annotations

import numpy as np

from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, Task, sample_key
from ieiw.storage.shards import ShardSpec, ShardWriter

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = ("circle", "square")


def shape_mask(size: int, shape: str, cy: int, cx: int, r: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    if shape == "circle":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return (abs(yy - cy) <= r) & (abs(xx - cx) <= r)


def make_sample(rng: np.random.Generator, index: int, size: int = 32, split: str = "train") -> Sample:
    background = rng.integers(90, 170, size=3)
    shape = SHAPES[rng.integers(len(SHAPES))]
    names = list(COLOURS)
    start, goal = rng.choice(len(names), size=2, replace=False)
    r = int(rng.integers(size // 6, size // 3))
    cy, cx = (int(v) for v in rng.integers(r, size - r, size=2))
    mask = shape_mask(size, shape, cy, cx, r)
    source = np.empty((size, size, 3), np.uint8)
    source[:] = background
    source[mask] = COLOURS[names[start]]
    target = source.copy()
    target[mask] = COLOURS[names[goal]]
    provenance = Provenance(dataset=f"synthetic-{split}", image_id=str(index))
    generator = GeneratorInfo(name="synthetic-recolour", backend="numpy", settings={"size": size})
    meta = SampleMeta(
        key=sample_key(Task.REPLACE, provenance, generator), task=Task.REPLACE,
        instruction=f"make the {shape} {names[goal]}", provenance=provenance, generator=generator,
        pretrain_caption=f"a {names[goal]} {shape}",
        extra={"source_caption": f"a {names[start]} {shape}", "target_caption": f"a {names[goal]} {shape}"},
    )
    return Sample(meta=meta, source=source, target=target, mask=(mask * 255).astype(np.uint8))


def write_synthetic_shards(directory: str, count: int, per_shard: int, seed: int = 0, size: int = 32,
                           split: str = "train") -> list[str]:
    """Write ``count`` samples into shards of ``per_shard``; returns the shard URLs."""
    rng = np.random.default_rng(seed)
    with ShardWriter(directory, prefix=f"synthetic-{split}", spec=ShardSpec(max_samples=per_shard)) as writer:
        for i in range(count):
            writer.write(make_sample(rng, i, size, split))
    return [s.url for s in writer.written]


def write_synthetic_stage(stage_url: str, count: int, per_batch: int, seed: int = 0, size: int = 32,
                          split: str = "train", uncommitted: int = 0) -> dict:
    """A stage folder of ours, written through the commit protocol: ``count`` samples in committed
    batches of ``per_batch``, plus (``uncommitted``) samples of a batch whose shard was written into
    ``shards/`` and whose manifest part never was, as a run killed between the two leaves it.

    Returns ``{"committed": [keys], "uncommitted": [keys], "orphan": shard URL or None}``.
    """
    from ieiw.storage.fingerprint import Fingerprint
    from ieiw.storage.manifest import SHARD_DIR
    from ieiw.storage.stage_folder import open_stage

    rng = np.random.default_rng(seed)
    samples = [make_sample(rng, i, size, split) for i in range(count + uncommitted)]
    fingerprint = Fingerprint(stage="synthetic", settings={"seed": seed, "size": size, "split": split})
    with open_stage(stage_url, fingerprint) as writer:
        for start in range(0, count, per_batch):
            batch = samples[start : min(count, start + per_batch)]
            writer.commit(f"synthetic-{start // per_batch:04d}", batch, ShardSpec(max_samples=per_batch))
        writer.finish()
    orphan = None
    if uncommitted:
        with ShardWriter(f"{stage_url}/{SHARD_DIR}", prefix="synthetic-killed") as shard_writer:
            for sample in samples[count:]:
                orphan = shard_writer.write(sample)
    return {"committed": [s.key for s in samples[:count]], "uncommitted": [s.key for s in samples[count:]],
            "orphan": orphan}
