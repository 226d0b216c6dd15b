"""The counted drop a reader or renderer returns for a record it cannot use."""

from __future__ import annotations

from ieiw.storage.schema import Drop, Provenance, stable_key


def keyed_drop(
    namespace: str,
    record_id: str,
    reason: str,
    detail: str,
    provenance: Provenance | None = None,
    task: str | None = None,
) -> Drop:
    """A drop with its reason slug, keyed stably by ``namespace`` (a dataset or stage), record and reason."""
    return Drop(
        key=stable_key(namespace, record_id, reason),
        reason=reason,
        detail=detail,
        record_id=record_id,
        task=task,
        provenance=provenance,
    )
