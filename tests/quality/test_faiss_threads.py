"""GPU FAISS indexes are not thread-safe, even for search: the object index and the KNN-GIQA reference
index, driven by many threads at once, never let two searches of a GPU index overlap.

No GPU is needed: a real FAISS index is searched through :class:`OverlapProbe`, which stands where a
GPU index stands (it answers ``getDevice``, as FAISS's ``GpuIndex*`` classes do, so the code under
test takes its GPU path) and records how many searches are inside it at once. Without ``getDevice``
it is a CPU index, searched concurrently: the control shows the probe sees overlaps when nothing
serialises them, so the guarded test can fail.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import pytest

from ieiw.pipelines.replacement.index import ObjectIndex
from ieiw.quality.faiss_search import on_gpu
from ieiw.quality.giqa_index import ReferenceIndex, ReferenceIndexMeta

THREADS = 8
SEARCHES = 12


class OverlapProbe:
    """A real FAISS index searched through a counter of the searches inside it at once."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.inside = 0
        self.most_inside = 0
        self.searches = 0
        self._count = threading.Lock()

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int):
        with self._count:
            self.inside += 1
            self.searches += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            time.sleep(0.003)  # widen the window in which a second search could enter
            return self.index.search(queries, k)
        finally:
            with self._count:
                self.inside -= 1


class GpuLikeProbe(OverlapProbe):
    def getDevice(self) -> int:  # noqa: N802  (FAISS's name)
        return 0


def _vectors(n: int = 2000, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _object_index(probe_class) -> tuple[ObjectIndex, OverlapProbe, np.ndarray]:
    vectors = _vectors()
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    probe = probe_class(flat)
    keys = np.arange(len(vectors), dtype=np.int64)
    return ObjectIndex(probe, "flat", keys, np.full(len(vectors), -1, np.int32), []), probe, vectors


def _reference_index(probe_class) -> tuple[ReferenceIndex, OverlapProbe, np.ndarray]:
    vectors = _vectors(seed=1)
    flat = faiss.IndexFlatL2(vectors.shape[1])
    flat.add(vectors)
    probe = probe_class(flat)
    meta = ReferenceIndexMeta(
        kind="flat",
        description="Flat",
        metric="l2",
        dim=vectors.shape[1],
        ntotal=len(vectors),
        features="clip",
        layout="single",
        bytes_per_vector=128.0,
    )
    return ReferenceIndex(probe, meta), probe, vectors


def _drive(index, queries: np.ndarray) -> list[np.ndarray]:
    """Every thread searches its own queries, all threads at once; returns each thread's rows."""
    start = threading.Barrier(THREADS)

    def work(number: int) -> np.ndarray:
        start.wait()
        mine = queries[number * SEARCHES : (number + 1) * SEARCHES]
        return np.concatenate([index.search(mine[i : i + 1], 3)[1] for i in range(len(mine))])

    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(work, range(THREADS)))


@pytest.mark.parametrize("make", [_object_index, _reference_index], ids=["object-index", "giqa-reference"])
def test_a_gpu_index_is_searched_by_one_thread_at_a_time(make):
    index, probe, vectors = make(GpuLikeProbe)
    assert on_gpu(probe)
    queries = vectors[: THREADS * SEARCHES]
    rows = _drive(index, queries)
    assert probe.searches == THREADS * SEARCHES
    assert probe.most_inside == 1, f"{probe.most_inside} searches of one GPU index overlapped"
    for number, found in enumerate(rows):  # and each thread got its own answers
        expected = probe.index.search(queries[number * SEARCHES : (number + 1) * SEARCHES], 3)[1]
        assert np.array_equal(found, expected)


@pytest.mark.parametrize("make", [_object_index, _reference_index], ids=["object-index", "giqa-reference"])
def test_a_cpu_index_searches_concurrently_and_the_probe_sees_it(make):
    index, probe, vectors = make(OverlapProbe)
    assert not on_gpu(probe) and not on_gpu(probe.index)
    _drive(index, vectors[: THREADS * SEARCHES])
    assert probe.most_inside > 1  # nothing serialised these searches: the probe counts overlaps
