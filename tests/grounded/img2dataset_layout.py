"""What img2dataset writes, for tests: img2dataset does not install here, so its documented layout is
written the way its writers write it (``img2dataset/writer.py``: ``webdataset.TarWriter`` members, a
``BufferedParquetWriter`` of the metadata, ``_stats.json``; keys from ``compute_key``).

- ``--output_format webdataset``: ``00000.tar`` with ``<key>.jpg``, ``<key>.txt`` (the caption) and
  ``<key>.json`` (the metadata, ``indent=4``) per downloaded photo; ``00000.parquet``, the metadata of
  every row (failed downloads too); ``00000_stats.json`` with ``count`` and ``successes``;
- ``--output_format parquet``: ``00000.parquet`` with the metadata columns and the image bytes in ``jpg``
  (null where the download failed).

The metadata: the input's columns (``url``, ``caption``, any ``--save_additional_columns``), then
``key``, ``status``, ``error_message``, ``width``, ``height``, ``original_width``, ``original_height``,
``exif`` and the ``--compute_hash`` (``sha256``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def compute_key(index: int, shard_id: int, samples_per_shard: int = 10000, oom_shard_count: int = 5) -> str:
    """img2dataset's key: the shard id, then the index in the shard, zero-padded."""
    oom_samples = math.ceil(math.log10(samples_per_shard))
    return f"{(10**oom_samples) * shard_id + index:0{oom_samples + oom_shard_count}d}"


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _metadata(row: dict[str, Any], index: int, shard_id: int, data: bytes | None, image) -> dict[str, Any]:
    ok = data is not None
    return {
        **row,  # url, caption, and the additional columns (license)
        "key": compute_key(index, shard_id),
        "status": "success" if ok else "failed_to_download",
        "error_message": None if ok else "HTTP Error 404: Not Found",
        "width": image.shape[1] if ok else None,
        "height": image.shape[0] if ok else None,
        "original_width": image.shape[1] if ok else None,
        "original_height": image.shape[0] if ok else None,
        "exif": None,
        "sha256": hashlib.sha256(data).hexdigest() if ok else None,
    }


SCHEMA = [
    ("url", pa.string()),
    ("caption", pa.string()),
    ("license", pa.string()),
    ("key", pa.string()),
    ("status", pa.string()),
    ("error_message", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("exif", pa.string()),
    ("sha256", pa.string()),
]


def write_webdataset(folder: Path, rows: list[dict[str, Any]], shard_id: int = 0) -> Path:
    """``rows``: ``{"url", "caption", "license", "image"}`` (``image`` None: the download failed)."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    name = f"{shard_id:05d}"
    metas = []
    with open(folder / f"{name}.tar", "wb") as stream:
        writer = wds.TarWriter(stream)
        for index, row in enumerate(rows):
            image = row.pop("image")
            data = _jpeg(image) if image is not None else None
            meta = _metadata(row, index, shard_id, data, image)
            metas.append(meta)
            if data is not None:
                writer.write(
                    {
                        "__key__": meta["key"],
                        "jpg": data,
                        "txt": row["caption"],
                        "json": json.dumps(meta, indent=4),
                    }
                )
        writer.close()
    pq.write_table(pa.Table.from_pylist(metas, pa.schema(SCHEMA)), folder / f"{name}.parquet")
    successes = sum(m["status"] == "success" for m in metas)
    stats = {"count": len(metas), "successes": successes, "failed_to_download": len(metas) - successes}
    (folder / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
    return folder


def write_parquet(folder: Path, rows: list[dict[str, Any]], shard_id: int = 0) -> Path:
    """``--output_format parquet``: the metadata and the image bytes in ``jpg``, one file per shard."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index, row in enumerate(rows):
        image = row.pop("image")
        data = _jpeg(image) if image is not None else None
        records.append({**_metadata(row, index, shard_id, data, image), "jpg": data})
    schema = pa.schema([*SCHEMA, ("jpg", pa.binary())])
    pq.write_table(pa.Table.from_pylist(records, schema), folder / f"{shard_id:05d}.parquet")
    return folder
