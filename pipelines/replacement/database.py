"""The object database: CLIP embeddings of region crops and their metadata, as part files.

Layout of a database folder (local or mounted, since vectors are memory-mapped)::

    parts/<name>.npy       (N, D) float32 unit rows
    parts/<name>.parquet   N rows of metadata, written after the vectors: marks the part complete
    index/                 the FAISS index over every part (see :mod:`.index`)

A row's metadata holds everything needed to cut the object out again (image path and the mask as
a COCO RLE), so retrieval never needs the source datasets' annotation files.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ieiw.storage import fs
from ieiw.storage.schema import stable_key

PARTS = "parts"
COLUMNS = pa.schema(
    [
        ("object_id", pa.string()),
        ("dataset", pa.string()),
        ("image_id", pa.string()),
        ("region_id", pa.string()),
        ("image_path", pa.string()),
        ("license", pa.string()),
        ("label", pa.string()),
        ("label_source", pa.string()),
        ("bbox", pa.list_(pa.int32())),
        ("area_fraction", pa.float32()),
        ("predicted_iou", pa.float32()),
        ("stability_score", pa.float32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("rle_counts", pa.string()),
    ]
)


def image_key(dataset: str, image_id: str) -> int:
    """A 60-bit integer per image: retrieval compares these to skip objects of the query's image."""
    return int(stable_key(dataset, image_id)[:15], 16)


def object_id(dataset: str, image_id: str, region_id: str) -> str:
    return stable_key("object", dataset, image_id, region_id)


def write_part(db_url: str, name: str, vectors: np.ndarray, rows: list[dict]) -> str:
    """Write one part: the vectors first, then the metadata that marks it complete."""
    if len(vectors) != len(rows):
        raise ValueError(f"{len(rows)} rows for {len(vectors)} vectors")
    base = os.path.join(db_url, PARTS, name)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32))
    fs.write_bytes_atomic(base + ".npy", buffer.getvalue())
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=COLUMNS), buffer)
    fs.write_bytes_atomic(base + ".parquet", buffer.getvalue())
    return base


def part_names(db_url: str) -> list[str]:
    """Names of the complete parts, sorted: their order is the database's row order."""
    folder = os.path.join(db_url, PARTS)
    if not os.path.isdir(folder):
        return []
    return sorted(
        n[: -len(".parquet")] for n in os.listdir(folder) if n.endswith(".parquet") and not n.startswith(".")
    )


class ObjectDatabase:
    """Read access to a database folder; vectors are memory-mapped, metadata read per part."""

    def __init__(self, url: str, cached_parts: int = 4) -> None:
        self.url = url
        self.parts = part_names(url)
        counts = [pq.read_metadata(self._path(p, ".parquet")).num_rows for p in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._tables: OrderedDict[str, pa.Table] = OrderedDict()
        self._cached_parts = cached_parts
        self._lock = threading.Lock()  # batches in threads share one database

    def _path(self, part: str, suffix: str) -> str:
        return os.path.join(self.url, PARTS, part + suffix)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def signature(self) -> str:
        """Changes whenever a part is added or removed: an index built before is then stale."""
        return stable_key(self.parts, self.offsets.tolist())

    def vectors(self, part: str) -> np.ndarray:
        return np.load(self._path(part, ".npy"), mmap_mode="r", allow_pickle=False)

    @property
    def dim(self) -> int:
        if not self.parts:
            raise ValueError(f"object database {self.url} is empty")
        return int(self.vectors(self.parts[0]).shape[1])

    def iter_vectors(self, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Every vector in row order, in chunks of at most ``chunk_rows`` (bounded memory)."""
        for part in self.parts:
            vectors = self.vectors(part)
            for start in range(0, len(vectors), chunk_rows):
                yield np.ascontiguousarray(vectors[start : start + chunk_rows], dtype=np.float32)

    def sample_vectors(self, count: int) -> np.ndarray:
        """About ``count`` vectors spread evenly over the database (for training an IVF index)."""
        rows = np.unique(np.linspace(0, len(self) - 1, num=min(count, len(self))).astype(np.int64))
        return (
            np.stack([self.vector(int(r)) for r in rows])
            if len(rows)
            else np.zeros((0, self.dim), np.float32)
        )

    def locate(self, row: int) -> tuple[str, int]:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} outside the database of {len(self)}")
        index = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.parts[index], row - int(self.offsets[index])

    def vector(self, row: int) -> np.ndarray:
        part, local = self.locate(row)
        return np.array(self.vectors(part)[local], dtype=np.float32)

    def iter_column(self, name: str) -> Iterator[list]:
        for part in self.parts:
            yield pq.read_table(self._path(part, ".parquet"), columns=[name]).column(name).to_pylist()

    def row(self, row: int) -> dict:
        part, local = self.locate(row)
        return self._table(part).slice(local, 1).to_pylist()[0]

    def _table(self, part: str) -> pa.Table:
        with self._lock:
            if part in self._tables:
                self._tables.move_to_end(part)
            else:
                self._tables[part] = pq.read_table(self._path(part, ".parquet"))
                while len(self._tables) > self._cached_parts:
                    self._tables.popitem(last=False)
            return self._tables[part]
