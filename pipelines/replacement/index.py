"""A FAISS index over the object database: exact for small databases, IVF or HNSW for large ones.

Vectors are unit rows, so inner product is cosine similarity. The index is built in chunks from
the database's committed parts and saved with per-row image keys and label ids. GPU FAISS is used
for flat and IVF indexes when it is installed and a GPU is visible; a GPU index is searched by one
thread at a time (:mod:`ieiw.quality.faiss_search`: FAISS GPU indexes are not thread-safe).

In the database's stage folder an index lies under ``index/<key>/``, where the key
(:func:`index_key`) hashes the database's fingerprint digest, its committed parts and the settings
the index was built with; ``index.json`` is written last and marks it complete. FAISS reads and
writes local files only, so for a database on an object store the index is built in, and loaded
(memory-mapped) from, a local cache copy under ``$IEIW_CACHE/object-index/<key>/``, and uploaded
to (or downloaded from) the stage folder; a local database's index is loaded where it lies.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import shutil
import uuid
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from ieiw.pipelines.replacement.database import ObjectDatabase, image_key
from ieiw.quality.faiss_search import gpu_available, search_guard
from ieiw.storage import fs
from ieiw.storage.config import WorkerEnv, config_fingerprint, operational
from ieiw.storage.identity import cache_root
from ieiw.storage.optional import import_faiss
from ieiw.storage.schema import stable_key

if TYPE_CHECKING:
    import faiss

INDEX_DIR = "index"
INDEX_FILE = "objects.faiss"
INFO_FILE = "index.json"  # written last: marks a saved index complete
FILES = (INDEX_FILE, "image_keys.npy", "label_ids.npy", INFO_FILE)
QUERY_TIME = ("nprobe", "ef_search")  # settings applied when the index is loaded, not when it is built


class IndexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_below: int = 100_000  # auto: exact search for smaller databases, IVF from here on
    nlist: int | None = None  # IVF lists; None: about 4 * sqrt(N)
    nprobe: int = 16
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    train_size: int = 100_000
    gpu: Literal["auto", "never"] = operational("auto")
    chunk_rows: int = operational(65536)


def resolve_kind(config: IndexConfig, count: int) -> str:
    if config.kind != "auto":
        return config.kind
    return "flat" if count < config.exact_below else "ivf"


def make_index(kind: str, dim: int, count: int, config: IndexConfig) -> faiss.Index:
    faiss = import_faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        return index
    nlist = config.nlist or int(4 * math.sqrt(max(count, 1)))
    nlist = max(1, min(nlist, count // 39 or 1))  # FAISS wants ~39 training points per list
    return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)


def to_gpu(index: faiss.Index, kind: str, config: IndexConfig) -> faiss.Index:
    faiss = import_faiss()
    if config.gpu == "never" or kind == "hnsw" or not gpu_available():
        return index
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def tune(index: faiss.Index, kind: str, config: IndexConfig) -> None:
    faiss = import_faiss()
    if kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = config.nprobe
    elif kind == "hnsw":
        index.hnsw.efSearch = config.ef_search


class ObjectIndex:
    """The FAISS index plus, per row, the image key and label id used to filter neighbours."""

    def __init__(
        self,
        index: faiss.Index,
        kind: str,
        image_keys: np.ndarray,
        label_ids: np.ndarray,
        labels: list[str],
        signature: str = "",
    ) -> None:
        self.index, self.kind = index, kind
        self.image_keys, self.label_ids, self.labels = image_keys, label_ids, labels
        self.signature = signature
        self._label_index = {name: i for i, name in enumerate(labels)}
        self._guard = search_guard(index)  # a lock for a GPU index: batches in threads take turns

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def label_id(self, label: str | None) -> int:
        return self._label_index.get(label, -1) if label else -1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and rows of the ``k`` nearest objects of each query (rows -1 past the end)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        with self._guard:
            return self.index.search(queries, min(k, max(len(self), 1)))

    def save(self, folder: str, key: str = "") -> str:
        """Write the index into a local ``folder`` (``index.json`` last)."""
        faiss = import_faiss()
        os.makedirs(folder, exist_ok=True)
        with self._guard:
            cpu = faiss.index_gpu_to_cpu(self.index) if hasattr(self.index, "getDevice") else self.index
        target = os.path.join(folder, INDEX_FILE)
        temporary = fs.temporary_name(target)
        faiss.write_index(cpu, temporary)  # FAISS writes the file itself: no second copy in memory
        os.replace(temporary, target)
        for name, array in (("image_keys.npy", self.image_keys), ("label_ids.npy", self.label_ids)):
            with fs.atomic_open(os.path.join(folder, name)) as handle:
                np.save(handle, array)
        info = {
            "kind": self.kind,
            "count": len(self),
            "labels": self.labels,
            "signature": self.signature,
            "key": key,
        }
        fs.write_bytes_atomic(os.path.join(folder, INFO_FILE), json.dumps(info).encode("utf-8"))
        return folder

    @classmethod
    def load(cls, folder: str, config: IndexConfig | None = None) -> ObjectIndex:
        """Load an index saved in a local ``folder``, memory-mapped (moved to the GPU where that applies)."""
        faiss = import_faiss()
        config = config or IndexConfig()
        info_path = os.path.join(folder, INFO_FILE)
        if not os.path.isfile(info_path):
            raise FileNotFoundError(f"no object index under {folder}: build it with the object_database flow")
        with open(info_path, encoding="utf-8") as handle:
            info = json.load(handle)
        index = faiss.read_index(os.path.join(folder, INDEX_FILE), faiss.IO_FLAG_MMAP)
        tune(index, info["kind"], config)
        index = to_gpu(index, info["kind"], config)
        image_keys = np.load(os.path.join(folder, "image_keys.npy"), mmap_mode="r", allow_pickle=False)
        label_ids = np.load(os.path.join(folder, "label_ids.npy"), mmap_mode="r", allow_pickle=False)
        return cls(index, info["kind"], image_keys, label_ids, info["labels"], info.get("signature", ""))


def build_index(db: ObjectDatabase, config: IndexConfig) -> ObjectIndex:
    """Train (IVF) and fill the index from the database's parts, chunk by chunk."""
    count = len(db)
    if count == 0:
        raise ValueError(f"object database {db.url} is empty: no region passed selection")
    kind = resolve_kind(config, count)
    index = make_index(kind, db.dim, count, config)
    if kind == "ivf":
        index.train(db.sample_vectors(config.train_size))
    index = to_gpu(index, kind, config)
    with tqdm(total=count, desc="index objects", unit="obj") as bar:
        for chunk in db.iter_vectors(config.chunk_rows):
            index.add(chunk)
            bar.update(len(chunk))
    tune(index, kind, config)
    keys = np.concatenate(
        [
            np.array([image_key(d, i) for d, i in zip(ds, ids)], dtype=np.int64)
            for ds, ids in zip(db.iter_column("dataset"), db.iter_column("image_id"))
        ]
    )
    labels = sorted({n for part in db.iter_column("label") for n in part if n})
    lookup = {name: i for i, name in enumerate(labels)}
    label_ids = np.concatenate(
        [
            np.array([lookup.get(n, -1) if n else -1 for n in part], dtype=np.int32)
            for part in db.iter_column("label")
        ]
    )
    return ObjectIndex(index, kind, keys, label_ids, labels, db.signature())


# ---------------------------------------------------------------------------- the index of a database


def build_settings(config: IndexConfig) -> dict:
    """The settings that shape the built index (by the one fingerprint rule, query-time ones apart)."""
    return dict(config_fingerprint("object_index", config, WorkerEnv(), exclude=QUERY_TIME).settings)


def index_key(database_digest: str, signature: str, config: IndexConfig) -> str:
    """What an index was built from: the database (fingerprint and committed parts) and the settings
    that shape the built index."""
    return stable_key("object-index", database_digest, signature, build_settings(config))


def index_url(db_url: str, key: str) -> str:
    return fs.join(db_url, INDEX_DIR, key)


def cache_folder(key: str) -> str:
    return str(cache_root() / "object-index" / key)


def _is_local(url: str) -> bool:
    return fs.is_local(fs.get_fs(url)[0])


def _complete(url: str, key: str) -> bool:
    try:
        return json.loads(fs.read_bytes(fs.join(url, INFO_FILE))).get("key") == key
    except (FileNotFoundError, ValueError):
        return False


def has_index(db_url: str, key: str) -> bool:
    """Whether the database holds a complete index with this key."""
    return _complete(index_url(db_url, key), key)


def index_info(db_url: str, key: str) -> dict:
    """What ``index.json`` of the database's index with this key says (kind, count, labels, key)."""
    return json.loads(fs.read_bytes(fs.join(index_url(db_url, key), INFO_FILE)))


def store_index(index: ObjectIndex, db_url: str, key: str) -> str:
    """Save ``index`` in the database under ``index/<key>/`` and remove the stale ones (built over other
    parts: an index of the same parts with other settings is kept, so switching back costs nothing).

    The caller holds the database's lease. A local database gets the files directly; an object store
    gets them uploaded from the local cache copy (each file one PUT or multipart upload, atomic there),
    ``index.json`` last.
    """
    target = index_url(db_url, key)
    if _is_local(db_url):
        index.save(fs.get_fs(target)[1], key)
    else:
        local = cache_folder(key)
        staging = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
        index.save(staging, key)
        filesystem, path = fs.get_fs(target)
        for name in FILES:
            filesystem.put_file(os.path.join(staging, name), posixpath.join(path, name))
        _settle(staging, local)
    _prune(db_url, key, index.signature)
    return target


def open_index(db_url: str, key: str, config: IndexConfig | None = None) -> ObjectIndex:
    """Load the database's index with this key: in place for a local database, else from the local
    cache copy (downloaded first if this machine has none)."""
    source = index_url(db_url, key)
    if _is_local(db_url):
        folder = fs.get_fs(source)[1]
        if not _complete(folder, key):
            raise FileNotFoundError(
                f"no object index {key} under {db_url}: build it with the object_database flow"
            )
        return ObjectIndex.load(folder, config)
    local = cache_folder(key)
    if not _complete(local, key):
        if not _complete(source, key):
            raise FileNotFoundError(
                f"no object index {key} under {db_url}: build it with the object_database flow"
            )
        staging = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(staging)
        filesystem, path = fs.get_fs(source)
        for name in FILES:  # index.json last: a partial copy is never complete
            filesystem.get_file(posixpath.join(path, name), os.path.join(staging, name))
        _settle(staging, local)
    return ObjectIndex.load(local, config)


def _settle(staging: str, final: str) -> None:
    """Move a complete local copy into place; another process that got there first wins."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if os.path.isdir(final) and not os.path.isfile(os.path.join(final, INFO_FILE)):
        shutil.rmtree(final, ignore_errors=True)  # a copy someone left incomplete by hand
    try:
        os.rename(staging, final)
    except OSError:  # already there (a concurrent copy): keep that one
        shutil.rmtree(staging, ignore_errors=True)


def _prune(db_url: str, keep: str, signature: str) -> None:
    """Remove every index but ``keep`` that was not built over the parts of ``signature`` (or not
    completely)."""
    filesystem, path = fs.get_fs(fs.join(db_url, INDEX_DIR))
    filesystem.invalidate_cache(path)
    if not filesystem.exists(path):
        return
    for entry in filesystem.ls(path, detail=False):
        name = posixpath.basename(entry.rstrip("/"))
        if name == keep:
            continue
        try:
            built_over = json.loads(fs.read_bytes(fs.join(db_url, INDEX_DIR, name, INFO_FILE))).get(
                "signature"
            )
        except (FileNotFoundError, ValueError):
            built_over = None
        if built_over != signature:
            filesystem.rm(entry, recursive=True)
