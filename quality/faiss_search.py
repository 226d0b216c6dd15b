"""FAISS searches that many threads may call at once.

FAISS GPU indexes are not thread-safe, not even for search: a GPU index and its
``StandardGpuResources`` share one stream and one scratch allocation, so two threads searching one
index at once corrupt each other's results. The batches of a stage run in threads (the threads task
runner, a Dask worker's threads), so a GPU index is searched under a lock of its own; a CPU index
searches concurrently (FAISS's CPU search only reads, and parallelises inside with OpenMP).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any


def gpu_available() -> bool:
    """FAISS has GPUs to build and search on here (the faiss-gpu build and a GPU)."""
    from ieiw.storage.optional import import_faiss

    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def faiss_device() -> str:
    """Where FAISS builds and searches an index on this machine, in words."""
    try:
        return "GPU (faiss-gpu)" if gpu_available() else "cpu"
    except (ImportError, RuntimeError):
        return "FAISS not installed"


# FAISS wrappers that fan a search out to indexes they hold (on every GPU, for index_cpu_to_all_gpus).
_FAN_OUT = ("IndexReplicas", "IndexShards", "IndexProxy")


def on_gpu(index: Any) -> bool:
    """Whether ``index`` searches on a GPU: a ``GpuIndex*`` (they answer ``getDevice``), or replicas or
    shards of them."""
    if hasattr(index, "getDevice"):
        return True
    if type(index).__name__.startswith(_FAN_OUT) and hasattr(index, "count"):
        from ieiw.storage.optional import import_faiss

        faiss = import_faiss()
        return any(on_gpu(faiss.downcast_index(index.at(i))) for i in range(index.count()))
    return False


def search_guard(index: Any) -> contextlib.AbstractContextManager:
    """A lock to hold around every search of ``index`` if it is on a GPU; a no-op context otherwise."""
    return threading.Lock() if on_gpu(index) else contextlib.nullcontext()
