"""Models load once per worker process and are shared by every batch that process runs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_MODELS: dict[str, Any] = {}
_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()
LOADS: dict[str, int] = {}  # how often each key was built: a test checks models load once


def cached_model(key: str, factory: Callable[[], T]) -> T:
    """Return the model stored under ``key``, building it with ``factory`` the first time only."""
    if key in _MODELS:
        return _MODELS[key]
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _MODELS:
            _MODELS[key] = factory()
            LOADS[key] = LOADS.get(key, 0) + 1
    return _MODELS[key]


def clear_models() -> None:
    _MODELS.clear()
    LOADS.clear()


GPU_TAG = "gpu"


def gpu_tags(uses_model: bool, device: str | None) -> list[str]:
    """The ``gpu`` tag for batches whose model runs on a GPU (explicitly, or by default when one exists)."""
    if not uses_model or (device is not None and not device.startswith("cuda")):
        return []
    if device is None:
        import torch

        if not torch.cuda.is_available():
            return []
    return [GPU_TAG]
