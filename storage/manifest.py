"""The Parquet manifest: one row per candidate, kept or dropped, with its shard and reason.

A stage writes one manifest *part* per batch, after that batch's shards are complete; the part is
the batch's commit marker. :func:`read_manifest` concatenates the parts for pandas or DuckDB, and
:func:`consolidate` writes them as one ``manifest.parquet``.
"""

from __future__ import annotations

import io
import json
import posixpath

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ieiw.storage import fs
from ieiw.storage.schema import Drop, Sample

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
    ]
)


def sample_row(sample: Sample, batch: str, shard: str) -> dict:
    meta = sample.meta
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
        "width": int(sample.target.shape[1]),
        "height": int(sample.target.shape[0]),
        "scores": json.dumps(meta.scores, sort_keys=True),
    }


def drop_row(drop: Drop, batch: str) -> dict:
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
    }


def rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def part_url(stage_url: str, batch: str) -> str:
    return fs.join(stage_url, MANIFEST_DIR, f"{batch}.parquet")


def write_part(stage_url: str, batch: str, rows: list[dict]) -> str:
    """Write one batch's rows atomically; its appearance marks the batch complete."""
    url = part_url(stage_url, batch)
    buffer = io.BytesIO()
    pq.write_table(rows_to_table(rows), buffer)
    fs.write_bytes_atomic(url, buffer.getvalue())
    return url


def part_urls(stage_url: str) -> list[str]:
    return [
        u
        for u in fs.list_files(fs.join(stage_url, MANIFEST_DIR), ".parquet")
        if not posixpath.basename(u).startswith(".")
    ]


def completed_batches(stage_url: str) -> set[str]:
    return {posixpath.basename(u)[: -len(".parquet")] for u in part_urls(stage_url)}


def read_table(stage_url: str, columns: list[str] | None = None) -> pa.Table:
    """All manifest rows of a stage output as one Arrow table (empty with the schema if none)."""
    tables = []
    for url in part_urls(stage_url):
        filesystem, path = fs.get_fs(url)
        with filesystem.open(path, "rb") as handle:
            tables.append(pq.read_table(handle, columns=columns))
    if not tables:
        schema = (
            MANIFEST_SCHEMA if columns is None else pa.schema([MANIFEST_SCHEMA.field(c) for c in columns])
        )
        return schema.empty_table()
    return pa.concat_tables(tables)


def read_manifest(stage_url: str, expand_scores: bool = False) -> pd.DataFrame:
    """The manifest of a stage output as a DataFrame; ``expand_scores`` adds ``score_<name>`` columns."""
    frame = read_table(stage_url).to_pandas()
    if expand_scores and len(frame):
        scores = pd.json_normalize(frame["scores"].map(json.loads)).add_prefix("score_")
        frame = pd.concat([frame.reset_index(drop=True), scores], axis=1)
    return frame


def completed_record_ids(stage_url: str) -> set[str]:
    """Record ids whose batch finished: a resumed stage skips them."""
    table = read_table(stage_url, columns=["record_id"])
    return set(table.column("record_id").to_pylist())


def consolidate(stage_url: str) -> str:
    """Write every part as one ``manifest.parquet`` beside the parts; returns its URL."""
    table = read_table(stage_url)
    url = fs.join(stage_url, CONSOLIDATED)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    fs.write_bytes_atomic(url, buffer.getvalue())
    return url
