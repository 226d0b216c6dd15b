"""Model calls at one fixed batch shape, so an item's result never depends on its batch-mates.

A network's float results depend on the shape of the call they come from: the kernels a library picks,
and the order in which they add, change with the batch size. An embedding cache, a resumed run or
another worker changes which items share a call, and with it the last bits of every result. Every
batched model call of the score stage therefore runs at exactly its configured batch size: the last
chunk is padded with copies of its first item and the padding's outputs are dropped. At a fixed shape
an item's result is the same whatever its batch-mates, their order or the number of threads, so the
same input gives the same bytes wherever and whenever it is scored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def padded_chunks(items: Sequence[T], size: int) -> Iterator[tuple[list[T], int]]:
    """``items`` in chunks of exactly ``size`` (the last padded with copies of its first item), each
    with how many of its items are real (the first ones)."""
    size = max(1, int(size))
    for start in range(0, len(items), size):
        chunk = list(items[start : start + size])
        real = len(chunk)
        yield chunk + [chunk[0]] * (size - real), real


def padded_rows(array: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, int]]:
    """The rows of ``array`` in blocks of exactly ``size`` rows (the last padded with copies of its first
    row), each with how many of its rows are real."""
    size = max(1, int(size))
    for start in range(0, len(array), size):
        block = array[start : start + size]
        real = len(block)
        if real < size:
            block = np.concatenate([block, np.repeat(block[:1], size - real, axis=0)])
        yield np.ascontiguousarray(block), real
