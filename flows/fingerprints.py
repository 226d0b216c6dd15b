"""The fingerprint of each stage of a build, from its config section.

A config section says more than what shapes the output: batch sizes, devices and worker counts change
how fast a stage runs, not what it writes, and local paths change with the machine. So a section is
turned into a fingerprint by rules, not by hand per stage:

- keys that are operational (:data:`OPERATIONAL_KEYS`) are left out;
- model keys (:data:`ieiw.flows.config.MODEL_KEYS`) become model identities by content;
- path keys (:data:`ieiw.flows.config.PATH_KEYS`) that name an input file (annotations, labels,
  captions, ...) become that file's content digest; those that name a folder (images) or an output
  are left out, since the records' provenance already says which images were used;
- a ``precision`` becomes the arithmetic it gives on the section's device (:func:`effective_precision`):
  ``auto`` runs bf16 on one GPU, fp16 on another and fp32 on a CPU, so a build resumed on another
  kind of machine is a changed build, not a mix of both.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from ieiw.flows.config import MODEL_KEYS, PATH_KEYS
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import file_digest, model_identity

# What changes how a stage runs, never what it writes.
OPERATIONAL_KEYS = frozenset(
    {
        "batch_size",
        "limit",
        "device",
        "max_workers",
        "num_workers",
        "max_in_flight",
        "retries",
        "retry_delay_seconds",
        "materialize_demo_images",
        "cache_dir",
        "state_path",
        "progress",
        "timeout",
        "timeout_seconds",
        "concurrency",
        "build_if_missing",
    }
)
# Path keys whose value is an output location, a working file or a folder of inputs: left out.
UNFINGERPRINTED_PATHS = frozenset(
    {"output", "images", "root", "cache_dir", "state_path", "index_dir", "database"}
)


def _input_identity(value: str) -> str | None:
    """A file's content digest; a folder or a URL stays out of the fingerprint (None)."""
    if "://" not in value and os.path.isfile(value):
        return f"sha256:{file_digest(value)}"
    return None


def effective_precision(precision: str, device: str | None) -> str:
    """What ``precision`` computes in on ``device`` (``auto``: the GPU if this host has one).

    Every half-precision setting runs fp32 on a CPU; on a GPU ``auto`` picks bf16 where the GPU
    supports it, so the GPU's kind is part of the answer."""
    if precision == "fp32":
        return "fp32"
    from ieiw.flows.models import resolve_device

    if not resolve_device(device or "auto").startswith("cuda"):
        return "fp32"
    import torch

    if precision == "auto":
        return "auto on cuda with bf16" if torch.cuda.is_bf16_supported() else "auto on cuda without bf16"
    return f"{precision} on cuda"


def split_settings(tree: Any, models: dict[str, str | None], prefix: str = "") -> Any:
    """``tree`` without operational keys and local paths; models are moved into ``models``."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "precision" and isinstance(value, str):
                out[key] = effective_precision(value, tree.get("device"))
                continue
            if key in OPERATIONAL_KEYS:
                continue
            if key in MODEL_KEYS and (isinstance(value, str) or value is None):
                models[name] = model_identity(value) if value else None
                continue
            if key in PATH_KEYS:
                if key in UNFINGERPRINTED_PATHS:
                    continue
                if isinstance(value, str):
                    out[key] = _input_identity(value) or os.path.basename(value.rstrip("/"))
                    continue
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    out[key] = [_input_identity(v) or os.path.basename(v.rstrip("/")) for v in value]
                    continue
            out[key] = split_settings(value, models, name)
        return out
    if isinstance(tree, list):
        return [split_settings(item, models, f"{prefix}[{i}]") for i, item in enumerate(tree)]
    return tree


def section_fingerprint(
    stage: str,
    section: BaseModel | Mapping[str, Any],
    upstream: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Fingerprint:
    """The fingerprint of a config section (plus ``extra`` settings the stage adds)."""
    tree = section.model_dump(mode="json") if isinstance(section, BaseModel) else dict(section)
    models: dict[str, str | None] = {}
    settings = split_settings(tree, models)
    if extra:
        settings = {**settings, **split_settings(dict(extra), models)}
    return Fingerprint(stage=stage, settings=settings, models=models, upstream=dict(upstream or {}))


def values_under(tree: Any, wanted: Callable[[str, Any], bool], prefix: str = "") -> dict[str, Any]:
    """Every ``key: value`` of a config tree, at any depth, that ``wanted(key, value)`` picks, by its
    dotted path (``removal.source.limit``, ``sources[0].limit``); a picked value is not walked into."""
    found: dict[str, Any] = {}
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if wanted(str(key), value):
                found[name] = value
            else:
                found.update(values_under(value, wanted, name))
    elif isinstance(tree, list):
        for i, item in enumerate(tree):
            found.update(values_under(item, wanted, f"{prefix}[{i}]"))
    return found


def _tree(section: BaseModel | Mapping[str, Any]) -> Any:
    return section.model_dump(mode="json") if isinstance(section, BaseModel) else dict(section)


def model_paths(section: BaseModel | Mapping[str, Any]) -> dict[str, str]:
    """Where each model of a section was found on this machine: recorded for people, not fingerprinted."""
    return values_under(_tree(section), lambda key, value: key in MODEL_KEYS and isinstance(value, str))


def input_key(section: BaseModel | Mapping[str, Any]) -> str:
    """What decides a stage's input beside its fingerprint: every ``limit`` in its config section (an
    operational key, so not in the fingerprint, but a larger limit is more input)."""
    return json.dumps(values_under(_tree(section), lambda key, _: key == "limit"), sort_keys=True)


def with_shard_encoding(fingerprint: Fingerprint, spec: BaseModel | None) -> Fingerprint:
    """``fingerprint`` plus how images are encoded in the shards (the format shapes the bytes written;
    shard sizes only cut the same samples differently)."""
    if spec is None:
        return fingerprint
    encoding = spec.model_dump(mode="json", include={"image_format", "jpeg_quality"})
    return Fingerprint(
        stage=fingerprint.stage,
        settings={**fingerprint.settings, "shards": encoding},
        models=fingerprint.models,
        upstream=fingerprint.upstream,
        schema_version=fingerprint.schema_version,
    )
