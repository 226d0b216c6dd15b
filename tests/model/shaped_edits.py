"""Synthetic editing shards of photos of several shapes (tall, square, wide), and of session samples.

The same recolouring task as :mod:`synthetic_edits`, on rectangular images, written with the production
:class:`ieiw.storage.shards.ShardWriter`; optionally as the turns and whole samples of multi-turn sessions.
"""

from __future__ import annotations

import numpy as np
from synthetic_edits import COLOURS, SHAPES, shape_mask

from ieiw.storage.schema import GeneratorInfo, Provenance, Sample, SampleMeta, Task, sample_key
from ieiw.storage.shards import ShardSpec, ShardWriter

SIZES = ((40, 20), (32, 32), (20, 40), (36, 28), (24, 44))  # (height, width)


def shaped_sample(
    rng: np.random.Generator, index: int, height: int, width: int, session: str = "", turn: int = -1
) -> Sample:
    background = rng.integers(90, 170, size=3)
    shape = SHAPES[rng.integers(len(SHAPES))]
    names = list(COLOURS)
    start, goal = rng.choice(len(names), size=2, replace=False)
    r = int(rng.integers(4, min(height, width) // 3))
    cy, cx = int(rng.integers(r, height - r)), int(rng.integers(r, width - r))
    canvas = max(height, width)
    mask = shape_mask(canvas, shape, cy, cx, r)[:height, :width]
    source = np.empty((height, width, 3), np.uint8)
    source[:] = background
    source[mask] = COLOURS[names[start]]
    target = source.copy()
    target[mask] = COLOURS[names[goal]]
    provenance = Provenance(dataset="shaped", image_id=str(index))
    generator = GeneratorInfo(name="shaped-recolour", backend="numpy", settings={"size": [height, width]})
    meta = SampleMeta(
        key=sample_key(Task.REPLACE, provenance, generator),
        task=Task.REPLACE,
        instruction=f"make the {shape} {names[goal]}",
        provenance=provenance,
        generator=generator,
        session_id=session,
        turn=turn,
    )
    return Sample(meta=meta, source=source, target=target, mask=(mask * 255).astype(np.uint8))


def write_shaped_shards(
    directory: str,
    count: int,
    per_shard: int,
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    sessions: bool = False,
) -> list[str]:
    """``count`` samples cycling through ``sizes``; with ``sessions``, in sessions of two turns and a
    whole-session sample (turns 1, 2, 0), every fourth sample alone."""
    rng = np.random.default_rng(seed)
    with ShardWriter(directory, prefix="shaped", spec=ShardSpec(max_samples=per_shard)) as writer:
        for i in range(count):
            height, width = sizes[i % len(sizes)]
            session, turn = "", -1
            if sessions and i % 4 != 3:
                session, turn = f"session-{i // 4}", (1, 2, 0)[i % 4]
            writer.write(shaped_sample(rng, i, height, width, session, turn))
    return [s.url for s in writer.written]
