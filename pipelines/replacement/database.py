"""The object database: CLIP embeddings of region crops and their metadata, a stage folder.

The database is a stage folder (:mod:`ieiw.storage.stage_folder`) on any fsspec store (a local
folder, ``s3://...``). One batch of images is one part::

    parts/<part>.npy            (N, D) float32 unit rows, written first
    parts/<part>.images.parquet each image of the part and its rejected regions by reason (:data:`IMAGES`)
    manifest/<part>.parquet     its N rows of metadata (:data:`COLUMNS`): commits the part
    manifest.parquet            the committed rows in one file (when a run finishes)
    index/<key>/                the FAISS index over the committed parts (see :mod:`.index`)
    stage.json                  the fingerprint the database was made with, and its runs

A row's metadata holds everything needed to cut the object out again (image path and the mask as
a COCO RLE), so retrieval never needs the source datasets' annotation files, and the replacement
stage takes its regions, masks, labels and vectors from here instead of running SAM and CLIP again
(:meth:`ObjectDatabase.image_rows`, :meth:`ObjectDatabase.regions_dropped`). A part exists for a
reader only once its manifest part is committed; vectors of parts that never committed are
invisible (and pruned by the next holder of the stage's lease).
"""

from __future__ import annotations

import io
import json
import posixpath
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ieiw.storage import fs, manifest
from ieiw.storage.schema import stable_key
from ieiw.storage.stage_folder import commit_files

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
# A committed part's table: the rows, the part they belong to, the stage fingerprint (added on commit).
PART_SCHEMA = pa.schema([*COLUMNS, ("part", pa.string()), ("fingerprint", pa.string())])
# Every image a part read (with or without stored objects): what selection rejected, by reason (JSON).
IMAGES = pa.schema([("image_key", pa.int64()), ("record_id", pa.string()), ("regions_dropped", pa.string())])


def image_key(dataset: str, image_id: str) -> int:
    """A 60-bit integer per image: retrieval compares these to skip objects of the query's image."""
    return int(stable_key(dataset, image_id)[:15], 16)


def object_id(dataset: str, image_id: str, region_id: str) -> str:
    return stable_key("object", dataset, image_id, region_id)


def vectors_path(part: str) -> str:
    """Where a part's vectors lie, relative to the database."""
    return posixpath.join(PARTS, f"{part}.npy")


def images_path(part: str) -> str:
    """Where a part's table of images lies, relative to the database."""
    return posixpath.join(PARTS, f"{part}.images.parquet")


def _part_of(file_name: str) -> str:
    for suffix in (".images.parquet", ".npy"):
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name


def part_table(part: str, rows: list[dict]) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=COLUMNS)
    return table.append_column("part", pa.array([part] * len(rows), pa.string()))


def part_files(part: str, vectors: np.ndarray, images: list[dict] | None = None) -> dict[str, bytes]:
    """A part's own files, by their path in the database: its vectors (and its table of ``images``, rows
    of :data:`IMAGES`), written before the manifest part that commits it."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32))
    files = {vectors_path(part): buffer.getvalue()}
    if images is not None:
        table = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(images, schema=IMAGES), table)
        files[images_path(part)] = table.getvalue()
    return files


def write_part(
    db_url: str,
    part: str,
    vectors: np.ndarray,
    rows: list[dict],
    fingerprint: str = "",
    holder: str | None = None,
    stage: str = "object_database",
    images: list[dict] | None = None,
) -> str:
    """Commit one part outside a run of the stage (synthetic databases, tools): its files, then its rows
    as the manifest part that commits it (if the stage's lease is still ``holder``'s; ``None`` skips the
    check). The object database stage returns the same files and rows to the runner instead."""
    if len(vectors) != len(rows):
        raise ValueError(f"{len(rows)} rows for {len(vectors)} vectors")
    files = part_files(part, vectors, images)
    return commit_files(db_url, part, part_table(part, rows), files, fingerprint, holder, stage)


def part_names(db_url: str) -> list[str]:
    """Names of the committed parts, sorted: their order is the database's row order."""
    return sorted(manifest.completed_batches(db_url))


def remove_uncommitted(db_url: str) -> int:
    """Delete the files of parts whose manifest part never committed (a killed run's); returns how many
    parts. Only the holder of the database's lease calls this, before its batches run (the stage does,
    when its run lists its input)."""
    committed = set(part_names(db_url))
    removed: set[str] = set()
    for suffix in (".npy", ".images.parquet"):
        for url in fs.list_files(fs.join(db_url, PARTS), suffix):
            name = _part_of(posixpath.basename(url))
            if name not in committed and not name.startswith("."):
                fs.remove(url)
                removed.add(name)
    return len(removed)


class ObjectDatabase:
    """Read access to the committed parts of a database; metadata is read per part when needed.

    Vectors are memory-mapped from a local database and read whole per part from an object store.
    """

    def __init__(self, url: str, cached_parts: int = 4) -> None:
        self.url = url
        self.parts = part_names(url)
        counts: Counter = Counter()
        if self.parts:
            column = manifest.read_table(url, columns=["part"], schema=PART_SCHEMA).column("part")
            counts.update(column.to_pylist())
        self.counts = [int(counts[p]) for p in self.parts]  # a part may hold no object (and no vectors)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts, dtype=np.int64)]).astype(np.int64)
        self._tables: OrderedDict[str, pa.Table] = OrderedDict()
        self._cached_parts = cached_parts
        self._lock = threading.Lock()  # batches in threads share one database
        filesystem, _ = fs.get_fs(url)
        self._local = fs.is_local(filesystem)
        self._rows_by_image: ImageRows | None = None
        self._images: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._image_tables: OrderedDict[str, pa.Table] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def signature(self) -> str:
        """What the committed parts are: an index built from other parts is stale."""
        return stable_key(self.parts, self.offsets.tolist())

    def vectors(self, part: str) -> np.ndarray:
        url = fs.join(self.url, vectors_path(part))
        if self._local:
            return np.load(fs.get_fs(url)[1], mmap_mode="r", allow_pickle=False)
        return np.load(io.BytesIO(fs.read_bytes(url)), allow_pickle=False)

    def _filled(self) -> list[str]:
        """The parts that hold objects, in row order."""
        return [part for part, count in zip(self.parts, self.counts, strict=True) if count]

    @property
    def dim(self) -> int:
        filled = self._filled()
        if not filled:
            raise ValueError(f"object database {self.url} is empty")
        return int(self.vectors(filled[0]).shape[1])

    def iter_vectors(self, chunk_rows: int = 65536) -> Iterator[np.ndarray]:
        """Every vector in row order, in chunks of at most ``chunk_rows`` (one part in memory)."""
        for part in self._filled():
            vectors = self.vectors(part)
            for start in range(0, len(vectors), chunk_rows):
                yield np.ascontiguousarray(vectors[start : start + chunk_rows], dtype=np.float32)

    def sample_vectors(self, count: int) -> np.ndarray:
        """About ``count`` vectors spread evenly over the database (for training an IVF index)."""
        if len(self) == 0:
            return np.zeros((0, self.dim), np.float32)
        rows = np.unique(np.linspace(0, len(self) - 1, num=min(count, len(self))).astype(np.int64))
        picked = []
        for index, part in enumerate(self.parts):
            start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
            mine = rows[(rows >= start) & (rows < stop)] - start
            if len(mine) and stop > start:
                picked.append(np.asarray(self.vectors(part)[mine], dtype=np.float32))
        return np.concatenate(picked)

    def locate(self, row: int) -> tuple[str, int]:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} outside the database of {len(self)}")
        index = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.parts[index], row - int(self.offsets[index])

    def vector(self, row: int) -> np.ndarray:
        part, local = self.locate(row)
        return np.array(self.vectors(part)[local], dtype=np.float32)

    def _read_part(self, part: str, columns: list[str] | None = None) -> pa.Table:
        filesystem, path = fs.get_fs(manifest.part_url(self.url, part))
        with filesystem.open(path, "rb") as handle:
            return pq.read_table(handle, columns=columns)

    def iter_column(self, name: str) -> Iterator[list]:
        for part in self._filled():
            yield self._read_part(part, [name]).column(name).to_pylist()

    def row(self, row: int) -> dict:
        part, local = self.locate(row)
        return self._table(part).slice(local, 1).to_pylist()[0]

    def _table(self, part: str) -> pa.Table:
        with self._lock:
            if part in self._tables:
                self._tables.move_to_end(part)
            else:
                self._tables[part] = self._read_part(part)
                while len(self._tables) > self._cached_parts:
                    self._tables.popitem(last=False)
            return self._tables[part]

    # ------------------------------------------------------------------ the objects of one image

    def image_rows(self, dataset: str, image_id: str) -> list[int]:
        """The rows of an image's stored objects, best first (as selection ranked them)."""
        with self._lock:
            if self._rows_by_image is None:
                keys = [
                    np.array([image_key(d, i) for d, i in zip(ds, ids, strict=True)], dtype=np.int64)
                    for ds, ids in zip(self.iter_column("dataset"), self.iter_column("image_id"), strict=True)
                ]
                self._rows_by_image = ImageRows(np.concatenate(keys) if keys else np.zeros(0, np.int64))
        return self._rows_by_image.rows(image_key(dataset, image_id))

    def regions_dropped(self, dataset: str, image_id: str) -> dict[str, int] | None:
        """What selection rejected among the image's regions, by reason; None if the database has no
        record of the image (not in its sources, unreadable, or a database made before these tables)."""
        key = image_key(dataset, image_id)
        with self._lock:
            if self._images is None:
                self._images = self._image_index()
            keys, parts, locals_ = self._images
            found = int(np.searchsorted(keys, key))
            if found >= len(keys) or keys[found] != key:
                return None
            part = self.parts[int(parts[found])]
            table = self._image_table(part)
        return json.loads(table.column("regions_dropped")[int(locals_[found])].as_py() or "{}")

    def _image_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every recorded image's key, sorted, with its part number and row in that part's table."""
        keys, parts, locals_ = [], [], []
        for number, part in enumerate(self.parts):
            url = fs.join(self.url, images_path(part))
            if not fs.exists(url):
                continue  # a part written before the image tables existed
            filesystem, path = fs.get_fs(url)
            with filesystem.open(path, "rb") as handle:
                column = pq.read_table(handle, columns=["image_key"]).column("image_key").to_numpy()
            keys.append(column)
            parts.append(np.full(len(column), number, np.int32))
            locals_.append(np.arange(len(column), dtype=np.int64))
        if not keys:
            return np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        key_array = np.concatenate(keys)
        order = np.argsort(key_array, kind="stable")
        return key_array[order], np.concatenate(parts)[order], np.concatenate(locals_)[order]

    def _image_table(self, part: str) -> pa.Table:
        """A part's table of images (the caller holds the lock); a few parts are kept in memory."""
        if part in self._image_tables:
            self._image_tables.move_to_end(part)
            return self._image_tables[part]
        filesystem, path = fs.get_fs(fs.join(self.url, images_path(part)))
        with filesystem.open(path, "rb") as handle:
            table = pq.read_table(handle)
        self._image_tables[part] = table
        while len(self._image_tables) > self._cached_parts:
            self._image_tables.popitem(last=False)
        return table


class ImageRows:
    """The rows of each image in a database, from the image key of every row (row order kept)."""

    def __init__(self, image_keys: np.ndarray) -> None:
        keys = np.asarray(image_keys, dtype=np.int64)
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    def rows(self, key: int) -> list[int]:
        start = int(np.searchsorted(self._sorted, key, side="left"))
        stop = int(np.searchsorted(self._sorted, key, side="right"))
        return sorted(int(r) for r in self._order[start:stop])
