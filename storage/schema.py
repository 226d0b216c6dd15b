"""The sample schema shared by every generator, scorer and the trainer.

A *sample* is one (source image, instruction, target image) triple with its metadata. A *drop*
is a candidate that did not become a sample, with the reason why. Stages return lists of both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
KEY_LENGTH = 24  # hex characters of the SHA-256 digest: 96 bits, no collision in practice


class Task(StrEnum):
    """What the edit asks for. Generators add members as they land."""

    REMOVE = "remove"
    ADD = "add"
    REPLACE = "replace"
    WEB_EDIT = "web_edit"
    KEYPOINT = "keypoint"
    SEGMENTATION = "segmentation"
    ENHANCEMENT = "enhancement"
    ALIGNED = "aligned"  # human-picked edits for instruction tuning


class Provenance(BaseModel):
    """Where a sample came from, so a user can trace, credit and honour removals."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    image_id: str
    region_id: str | None = None
    url: str | None = None
    license: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


class GeneratorInfo(BaseModel):
    """What made a sample: the generator, its backend, the model and every setting that matters."""

    model_config = ConfigDict(extra="forbid")

    name: str
    backend: str
    model: str | None = None
    seed: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


class SampleMeta(BaseModel):
    """Everything about a sample except its pixels; stored as the shard entry's ``json``."""

    model_config = ConfigDict(extra="forbid")

    key: str
    task: Task
    instruction: str
    instruction_source: str = ""
    provenance: Provenance
    generator: GeneratorInfo
    record_id: str = ""
    pretrain_caption: str | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    drop_reason: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


@dataclass
class Sample:
    """A finished triple. Images are HxWx3 ``uint8`` RGB arrays; the mask is HxW ``uint8`` (0/255)."""

    meta: SampleMeta
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray | None = None

    @property
    def key(self) -> str:
        return self.meta.key


@dataclass
class EncodedSample:
    """A sample as the bytes of its shard members (``src.jpg``, ``tgt.jpg``, ``mask.png``, ...): a stage
    that only rewrites metadata (the filter) copies the images byte for byte instead of re-encoding.
    ``width`` and ``height`` are the target's."""

    meta: SampleMeta
    members: dict[str, bytes]
    width: int
    height: int

    @property
    def key(self) -> str:
        return self.meta.key


@dataclass
class Drop:
    """A candidate that was not kept, and why. ``reason`` is a short slug counted in reports."""

    key: str
    reason: str
    detail: str = ""
    record_id: str = ""
    task: str | None = None
    provenance: Provenance | None = None
    scores: dict[str, float] = field(default_factory=dict)


Result = Sample | EncodedSample | Drop


def stable_key(*parts: Any) -> str:
    """A content key from JSON-serialisable parts: the same inputs give the same key on every run."""
    payload = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_LENGTH]


def sample_key(task: Task | str, provenance: Provenance, generator: GeneratorInfo) -> str:
    """The key of the sample made by ``generator`` for ``task`` from ``provenance``."""
    return stable_key(
        str(task),
        provenance.model_dump(mode="json", exclude={"license", "url"}),
        generator.model_dump(mode="json"),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable for a key: {type(value).__name__}")
