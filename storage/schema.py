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
from pydantic import BaseModel, ConfigDict, Field, model_validator

# 2: the shard ``json`` is one flat record of fixed keys and types (see SampleMeta.to_record), so a
# WebDataset reader that infers columns from the first samples (Hugging Face ``datasets``) loads any mix
# of tasks without losing a field. 3: session_id, turn, judge and instruction_alternatives.
SCHEMA_VERSION = 3
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
    PREFERENCE = "preference"  # a chosen and a rejected edit of one source (preference training)


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
    # the quality judge's verdict ({"model", "rubric", "scores", "reasons"}) when one judged the pair
    judge: dict[str, Any] = Field(default_factory=dict)
    # other wordings of the edit beside ``instruction``, each {"text", "source"} (e.g. the judge's)
    instruction_alternatives: list[dict[str, str]] = Field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    # A multi-turn edit session (successive edits of one image): its id, and the sample's turn in it
    # (1, 2, ...; 0 for the sample of the whole session). "" and -1 for a sample of no session.
    session_id: str = ""
    turn: int = -1

    @model_validator(mode="before")
    @classmethod
    def _from_record(cls, data: Any) -> Any:
        """Accept the flat shard record (:meth:`to_record`) as well as the nested form."""
        if isinstance(data, dict) and "provenance" not in data and "dataset" in data:
            return record_to_nested(data)
        return data

    def to_record(self, mask_kind: str = "given") -> dict[str, Any]:
        """The shard's ``json``: every key always present with one type, whatever the task.

        Free-form parts (generator settings, provenance extras, task parameters, scores) are JSON
        strings (``judge`` ``"{}"`` and ``instruction_alternatives`` ``"[]"`` when there are none),
        absent values are ``""`` (strings) or ``-1`` (the seed), so a reader that infers its
        columns from the first few samples (Hugging Face ``datasets``) reads every later one too.
        ``mask_kind`` says where ``mask.png`` came from: ``given`` by the generator, or ``difference``
        (the pixels where target and source differ, for tasks without a region of their own).
        """
        prov, gen = self.provenance, self.generator
        return {
            "schema_version": SCHEMA_VERSION,
            "key": self.key,
            "task": str(self.task),
            "instruction": self.instruction,
            "instruction_source": self.instruction_source,
            "record_id": self.record_id,
            "pretrain_caption": self.pretrain_caption or "",
            "dataset": prov.dataset,
            "image_id": prov.image_id,
            "region_id": prov.region_id or "",
            "url": prov.url or "",
            "license": prov.license or "",
            "provenance_extra": _dumps(prov.extra),
            "generator": gen.name,
            "backend": gen.backend,
            "model": gen.model or "",
            "seed": -1 if gen.seed is None else int(gen.seed),
            "settings": _dumps(gen.settings),
            "scores": _dumps(self.scores),
            "drop_reason": self.drop_reason or "",
            "extra": _dumps(self.extra),
            "mask_kind": mask_kind,
            "session_id": self.session_id,
            "turn": int(self.turn),
            "judge": _dumps(self.judge),
            "instruction_alternatives": _dumps(self.instruction_alternatives),
        }

    def to_json_bytes(self, mask_kind: str = "given") -> bytes:
        return json.dumps(self.to_record(mask_kind), ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8"
        )


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_jsonable)


def record_to_nested(record: dict[str, Any]) -> dict[str, Any]:
    """The nested :class:`SampleMeta` fields of a flat shard record."""

    def text(name: str) -> str | None:
        value = record.get(name)
        return value if value else None

    seed = record.get("seed", -1)
    return {
        "key": record["key"],
        "task": record["task"],
        "instruction": record["instruction"],
        "instruction_source": record.get("instruction_source", ""),
        "record_id": record.get("record_id", ""),
        "pretrain_caption": text("pretrain_caption"),
        "provenance": {
            "dataset": record["dataset"],
            "image_id": record["image_id"],
            "region_id": text("region_id"),
            "url": text("url"),
            "license": text("license"),
            "extra": json.loads(record.get("provenance_extra") or "{}"),
        },
        "generator": {
            "name": record["generator"],
            "backend": record["backend"],
            "model": text("model"),
            "seed": None if seed is None or int(seed) < 0 else int(seed),
            "settings": json.loads(record.get("settings") or "{}"),
        },
        "scores": json.loads(record.get("scores") or "{}"),
        "drop_reason": text("drop_reason"),
        "extra": json.loads(record.get("extra") or "{}"),
        "judge": json.loads(record.get("judge") or "{}"),
        "instruction_alternatives": json.loads(record.get("instruction_alternatives") or "[]"),
        "schema_version": int(record.get("schema_version", SCHEMA_VERSION)),
        "session_id": record.get("session_id") or "",
        "turn": int(record.get("turn", -1)),
    }


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
    mask_kind: str = "given"  # used when ``members`` holds no previous json to take it from

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
