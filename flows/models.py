"""Models load once per worker process, on that worker's device, and are shared by every batch it runs.

A worker is pinned to one GPU by its environment (``CUDA_VISIBLE_DEVICES``: a Dask GPU worker of
:mod:`ieiw.flows.runners`, or ``ieiw worker --gpu N``), so inside it ``cuda`` is that GPU. The cache
is keyed by what a model is and by the device it lives on, the device resolved to one spelling
(``cpu``, ``cuda:0``): ``auto``, ``None``, ``cuda`` and ``cuda:0`` name one device, and operational
settings (devices, batch sizes) are not part of what a model is (:func:`model_key`), so a process
never holds two copies of one model on one device. A batch size other than the cached object's is
applied to a shallow copy sharing its weights (:func:`cached_model`'s ``batch_size``).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T")

HOST = "host"  # objects that live in the process's memory only (databases, caption tables, clients)
_MODELS: dict[tuple[str, str], Any] = {}
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_GUARD = threading.Lock()
LOADS: dict[str, int] = {}  # how often each key was built (on any device): a test checks models load once
# Settings that say where and how fast a model runs, never what it is.
OPERATIONAL = frozenset({"device", "batch_size", "points_per_batch", "num_workers", "progress"})


def resolve_device(device: str | None) -> str:
    """One spelling per device: ``cpu`` or ``cuda:N`` (``auto``/``None``: the GPU if there is one).

    Inside a pinned worker ``cuda`` and ``cuda:0`` are both its one visible GPU."""
    if device in (None, "", "auto"):
        import torch

        return f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    if device == HOST:
        return HOST
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return device if ":" in device else "cuda:0"  # what it would be; loading will say why not
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        return f"cuda:{index}"
    return device


def model_key(kind: str, section: BaseModel | Mapping[str, Any] | None, *extra: Any) -> str:
    """What a model is: its kind and config section less operational settings (at any depth)."""
    tree = section.model_dump(mode="json") if isinstance(section, BaseModel) else (section or {})
    return f"{kind}:{json.dumps([_strip(tree), *extra], sort_keys=True, default=str)}"


def _strip(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _strip(v) for k, v in node.items() if k not in OPERATIONAL}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def cached_model(
    key: str, factory: Callable[[], T], device: str | None = HOST, batch_size: int | None = None
) -> T:
    """The model stored under ``key`` on ``device``, built with ``factory`` the first time only.

    ``device`` is where ``factory`` puts the model (as its config spells it; resolved here, so
    ``auto`` and ``cuda:0`` share one entry); the default, :data:`HOST`, is for objects on no device.
    ``batch_size``, where given and different from the cached object's ``batch_size``, is set on a
    shallow copy that shares the weights."""
    slot = (key, resolve_device(device))
    model = _MODELS.get(slot)
    if model is None:
        with _GUARD:
            lock = _LOCKS.setdefault(slot, threading.Lock())
        with lock:
            if slot not in _MODELS:
                _MODELS[slot] = factory()
                LOADS[key] = LOADS.get(key, 0) + 1
        model = _MODELS[slot]
    if batch_size is not None and getattr(model, "batch_size", batch_size) != batch_size:
        model = copy.copy(model)
        model.batch_size = batch_size
    return model


def cached_entries(kind: str | None = None) -> list[tuple[str, str]]:
    """``(key, device)`` of every object the cache holds in this process (of one ``kind``, if given)."""
    return sorted(slot for slot in _MODELS if kind is None or slot[0].startswith(f"{kind}:"))


def worker_gpu() -> str | None:
    """The GPU this process is pinned to (``CUDA_VISIBLE_DEVICES`` naming exactly one), else None."""
    visible = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return visible[0].strip() if len(visible) == 1 else None


def clear_models() -> None:
    _MODELS.clear()
    LOADS.clear()


GPU_TAG = "gpu"


def gpu_tags(uses_model: bool, device: str | None) -> list[str]:
    """The ``gpu`` tag for batches whose model runs on a GPU (explicitly, or by default when one exists)."""
    if not uses_model or (device not in (None, "auto") and not device.startswith("cuda")):
        return []
    if device in (None, "auto"):
        import torch

        if not torch.cuda.is_available():
            return []
    return [GPU_TAG]
