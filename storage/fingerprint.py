"""A stage's fingerprint: everything that determines what it writes, hashed, and said in words when it
changes.

``settings`` is a JSON tree of the stage's settings that shape its output (never a local path, never a
batch size or a device), ``models`` maps each model's role to its identity by content
(:func:`ieiw.storage.identity.model_identity`), ``upstream`` maps each stage it reads to that stage's
digest. Two fingerprints with the same digest make the same output; :meth:`Fingerprint.changes` lists
what differs as ``removal.dilation: 9 -> 25``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ieiw.storage.identity import short
from ieiw.storage.schema import SCHEMA_VERSION, stable_key


@dataclass(frozen=True)
class Fingerprint:
    stage: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    models: Mapping[str, str | None] = field(default_factory=dict)
    upstream: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def digest(self) -> str:
        return stable_key(
            "fingerprint",
            self.stage,
            _plain(self.settings),
            dict(self.models),
            dict(self.upstream),
            self.schema_version,
        )

    def record(self) -> dict[str, Any]:
        """The JSON form stored with the stage and read back by :meth:`from_record`."""
        return {
            "stage": self.stage,
            "digest": self.digest,
            "settings": _plain(self.settings),
            "models": dict(self.models),
            "upstream": dict(self.upstream),
            "schema_version": self.schema_version,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Fingerprint:
        return cls(
            stage=record["stage"],
            settings=record.get("settings", {}),
            models=record.get("models", {}),
            upstream=record.get("upstream", {}),
            schema_version=int(record.get("schema_version", 0)),
        )

    def changes(self, recorded: Fingerprint) -> list[str]:
        """What differs from ``recorded`` (the stage as it was made), one line per leaf."""
        lines: list[str] = []
        old, new = dict(_flatten(_plain(recorded.settings))), dict(_flatten(_plain(self.settings)))
        for name in sorted(old.keys() | new.keys()):
            if old.get(name, _ABSENT) != new.get(name, _ABSENT):
                lines.append(
                    f"{self.stage}.{name}: {_show(old.get(name, _ABSENT))} -> {_show(new.get(name, _ABSENT))}"
                )
        for kind, before, after in (
            ("model", recorded.models, self.models),
            ("upstream", recorded.upstream, self.upstream),
        ):
            for name in sorted(set(before) | set(after)):
                if before.get(name) != after.get(name):
                    label = f"{self.stage}.{name}" if kind == "model" else f"{self.stage} input {name}"
                    lines.append(f"{label}: {short(before.get(name))} -> {short(after.get(name))}")
        if recorded.schema_version != self.schema_version:
            lines.append(f"schema version: {recorded.schema_version} -> {self.schema_version}")
        return lines


class _Absent:
    def __repr__(self) -> str:
        return "(unset)"


_ABSENT = _Absent()


def _plain(tree: Any) -> Any:
    """The tree as plain JSON values (tuples become lists), so a recorded one compares equal."""
    return json.loads(json.dumps(tree, sort_keys=True, default=str))


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(tree, dict) and tree:
        for key in sorted(tree):
            yield from _flatten(tree[key], f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix or "(settings)", tree


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(unset)"
    return (
        json.dumps(value)
        if isinstance(value, (dict, list, str)) and not isinstance(value, bool)
        else str(value)
    )
