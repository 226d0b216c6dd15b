"""The Parquet manifest: one row per candidate, kept or dropped, with its shard and reason.

A stage writes one manifest *part* per batch, after that batch's shards are complete; the part is
the batch's commit marker, and the only thing that makes its shards exist for a reader. Every row
carries the fingerprint of the stage that made it. :func:`read_table` / :func:`read_manifest` return
the committed rows for pandas or DuckDB; :func:`consolidate` writes them as one ``manifest.parquet``
that names the batches it covers, so a reader with thousands of parts reads that file plus only the
parts committed after it. :func:`committed_shards` is the one function every reader takes its shard
list from.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ieiw.storage import fs
from ieiw.storage.schema import Drop, EncodedSample, Sample

MANIFEST_DIR = "manifest"
SHARD_DIR = "shards"
CONSOLIDATED = "manifest.parquet"

MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("record_id", pa.string()),
        ("batch", pa.string()),
        ("task", pa.string()),
        ("kept", pa.bool_()),
        ("drop_reason", pa.string()),
        ("drop_detail", pa.string()),
        ("shard", pa.string()),
        ("instruction", pa.string()),
        ("instruction_source", pa.string()),
        ("dataset", pa.string()),
        ("image_id", pa.string()),
        ("region_id", pa.string()),
        ("url", pa.string()),
        ("license", pa.string()),
        ("generator", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
        ("seed", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("scores", pa.string()),
        ("fingerprint", pa.string()),
        # multi-turn sessions (SampleMeta.session_id / turn): null for samples of no session and drops
        ("session_id", pa.string()),
        ("turn", pa.int32()),
    ]
)
COVERED_BATCHES = b"ieiw.batches"  # consolidated file metadata: the batches it holds, as JSON


def sample_row(
    sample: Sample | EncodedSample, batch: str, shard: str, fingerprint: str | None = None
) -> dict:
    meta = sample.meta
    if isinstance(sample, EncodedSample):
        width, height = sample.width, sample.height
    else:
        height, width = sample.target.shape[:2]
    prov, gen = meta.provenance, meta.generator
    return {
        "key": meta.key,
        "record_id": meta.record_id,
        "batch": batch,
        "task": str(meta.task),
        "kept": meta.drop_reason is None,
        "drop_reason": meta.drop_reason,
        "drop_detail": None,
        "shard": shard,
        "instruction": meta.instruction,
        "instruction_source": meta.instruction_source,
        "dataset": prov.dataset,
        "image_id": prov.image_id,
        "region_id": prov.region_id,
        "url": prov.url,
        "license": prov.license,
        "generator": gen.name,
        "backend": gen.backend,
        "model": gen.model,
        "seed": gen.seed,
        "width": int(width),
        "height": int(height),
        "scores": json.dumps(meta.scores, sort_keys=True),
        "fingerprint": fingerprint,
        "session_id": meta.session_id or None,
        "turn": meta.turn if meta.session_id else None,
    }


def drop_row(drop: Drop, batch: str, fingerprint: str | None = None) -> dict:
    prov = drop.provenance
    return {
        "key": drop.key,
        "record_id": drop.record_id,
        "batch": batch,
        "task": drop.task,
        "kept": False,
        "drop_reason": drop.reason,
        "drop_detail": drop.detail,
        "shard": None,
        "instruction": None,
        "instruction_source": None,
        "dataset": prov.dataset if prov else None,
        "image_id": prov.image_id if prov else None,
        "region_id": prov.region_id if prov else None,
        "url": prov.url if prov else None,
        "license": prov.license if prov else None,
        "generator": None,
        "backend": None,
        "model": None,
        "seed": None,
        "width": None,
        "height": None,
        "scores": json.dumps(drop.scores, sort_keys=True),
        "fingerprint": fingerprint,
    }


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def part_url(stage_url: str, batch: str, folder: str = MANIFEST_DIR) -> str:
    return fs.join(stage_url, folder, f"{batch}.parquet")


def write_part(
    stage_url: str,
    batch: str,
    rows: list[dict] | pa.Table,
    metadata: dict | None = None,
    folder: str = MANIFEST_DIR,
) -> str:
    """Write one batch's rows atomically; its appearance commits the batch (in ``manifest/``)."""
    url = part_url(stage_url, batch, folder)
    table = rows if isinstance(rows, pa.Table) else rows_to_table(rows)
    if metadata:
        extra = {f"ieiw.{k}".encode(): json.dumps(v).encode() for k, v in metadata.items()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.write_bytes_atomic(url, buffer.getvalue())
    return url


def part_urls(stage_url: str, folder: str = MANIFEST_DIR) -> list[str]:
    return [
        u
        for u in fs.list_files(fs.join(stage_url, folder), ".parquet")
        if not posixpath.basename(u).startswith(".")
    ]


def _batch_of(part: str) -> str:
    return posixpath.basename(part)[: -len(".parquet")]


def completed_batches(stage_url: str) -> set[str]:
    return {_batch_of(u) for u in part_urls(stage_url)}


def _read_parquet(url: str, columns: list[str] | None) -> pa.Table:
    filesystem, path = fs.get_fs(url)
    with filesystem.open(path, "rb") as handle:
        return pq.read_table(handle, columns=columns)


def _covered(url: str) -> set[str] | None:
    """The batches a consolidated manifest holds (None when there is none, or it is unreadable)."""
    filesystem, path = fs.get_fs(url)
    try:
        with filesystem.open(path, "rb") as handle:
            meta = pq.read_schema(handle).metadata or {}
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return None
    raw = meta.get(COVERED_BATCHES)
    return set(json.loads(raw)) if raw else None


def read_table(
    stage_url: str,
    columns: list[str] | None = None,
    schema: pa.Schema = MANIFEST_SCHEMA,
    folder: str = MANIFEST_DIR,
) -> pa.Table:
    """Every committed row of a stage as one Arrow table (empty, with ``schema``, when there is none).

    Reads the consolidated ``manifest.parquet`` for the batches it covers and the parts committed
    since; rows of anything else in the folder do not exist. ``folder`` names another table of parts
    kept the same way (the stage's listing of its input batches, ``inputs/``).
    """
    parts = {_batch_of(u): u for u in part_urls(stage_url, folder)}
    tables: list[pa.Table] = []
    consolidated = fs.join(stage_url, f"{folder}.parquet")
    covered = _covered(consolidated) if parts else None
    if covered and covered <= parts.keys():
        tables.append(_read_parquet(consolidated, columns))
        remaining = [parts[b] for b in sorted(parts.keys() - covered)]
    else:
        remaining = [parts[b] for b in sorted(parts)]
    tables += [_read_parquet(u, columns) for u in remaining]
    if not tables:
        fields = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        return fields.empty_table()
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables], promote_options="default")


def read_manifest(stage_url: str, expand_scores: bool = False) -> pd.DataFrame:
    """The manifest of a stage output as a DataFrame; ``expand_scores`` adds ``score_<name>`` columns."""
    frame = read_table(stage_url).to_pandas()
    if expand_scores and len(frame):
        scores = pd.json_normalize(frame["scores"].map(json.loads)).add_prefix("score_")
        frame = pd.concat([frame.reset_index(drop=True), scores], axis=1)
    return frame


def completed_record_ids(stage_url: str) -> set[str]:
    """Record ids whose batch was committed, as Python strings (for tools and tests; a resuming stage
    uses the compact :func:`completed_records`)."""
    table = read_table(stage_url, columns=["record_id"])
    return set(table.column("record_id").drop_null().unique().to_pylist())


class RecordSet:
    """Committed record ids as a sorted array of 16-byte digests: membership in O(log n) and 16 bytes
    per record, so resuming a stage of millions of records costs megabytes, not gigabytes."""

    def __init__(self, ids: Iterable[pa.Array]) -> None:
        digests = [
            np.fromiter((_digest(value) for value in chunk.to_pylist() if value is not None), dtype="S16")
            for chunk in ids
        ]
        merged = np.concatenate(digests) if digests else np.zeros(0, dtype="S16")
        self._sorted = np.unique(merged)

    def __len__(self) -> int:
        return int(self._sorted.size)

    def __contains__(self, record_id: object) -> bool:
        if not isinstance(record_id, str) or not self._sorted.size:
            return False
        digest = np.array(_digest(record_id), dtype="S16")
        index = int(np.searchsorted(self._sorted, digest))
        return index < self._sorted.size and self._sorted[index] == digest


def _digest(record_id: str) -> bytes:
    return hashlib.blake2b(record_id.encode("utf-8"), digest_size=16).digest()


def completed_records(stage_url: str, chunk_rows: int = 65536) -> RecordSet:
    """The committed record ids of a stage as a :class:`RecordSet` (read a chunk at a time)."""
    column = read_table(stage_url, columns=["record_id"]).column("record_id")
    return RecordSet(
        column.slice(start, chunk_rows).combine_chunks() for start in range(0, len(column), chunk_rows)
    )


def committed_shards(stage_url: str) -> list[str]:
    """The URLs of the shards committed batches list, sorted: what a reader of the stage may read.

    Shards of a batch that was never committed, and any other file in ``shards/``, are invisible.
    """
    names = read_table(stage_url, columns=["shard"]).column("shard").drop_null().unique().to_pylist()
    return [fs.join(stage_url, SHARD_DIR, name) for name in sorted(names)]


def is_stage_folder(url: str) -> bool:
    """A folder written by a stage of ours: it has a ``manifest/`` of parts."""
    return fs.exists(fs.join(url, MANIFEST_DIR))


def consolidate(stage_url: str, schema: pa.Schema = MANIFEST_SCHEMA, folder: str = MANIFEST_DIR) -> str:
    """Write every committed row as one ``manifest.parquet`` (naming its batches); returns its URL."""
    batches = sorted(_batch_of(u) for u in part_urls(stage_url, folder))
    table = read_table(stage_url, schema=schema, folder=folder)
    table = table.replace_schema_metadata({COVERED_BATCHES: json.dumps(batches).encode()})
    url = fs.join(stage_url, f"{folder}.parquet")
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.write_bytes_atomic(url, buffer.getvalue())
    return url


def reader_shards(url: str) -> list[str]:
    """The shards a reader may read under ``url``: one function for every reader.

    - a stage folder of ours (it has ``manifest/``), or its ``shards/`` folder: the shards its
      committed manifest parts list;
    - a ``.tar`` file or a brace pattern: itself;
    - any other folder (a WebDataset someone else wrote): its ``*.tar`` files.
    """
    url = str(url).rstrip("/")
    if url.endswith(".tar"):
        return [url]
    if "{" in url:
        from braceexpand import braceexpand  # webdataset's own dependency: "shard-{0000..0099}.tar"

        return list(braceexpand(url))
    if is_stage_folder(url):
        return committed_shards(url)
    parent, name = posixpath.split(url)
    if name == SHARD_DIR and is_stage_folder(parent):
        return committed_shards(parent)
    return [u for u in fs.list_files(url, ".tar") if not posixpath.basename(u).startswith(".")]


def resolve_shards(urls: Iterable[str] | str) -> list[str]:
    """:func:`reader_shards` of every input, in order."""
    if isinstance(urls, str):
        urls = [urls]
    out: list[str] = []
    for url in urls:
        out.extend(reader_shards(url))
    return out
