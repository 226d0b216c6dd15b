"""A FAISS index over the object database: exact for small databases, IVF or HNSW for large ones.

Vectors are unit rows, so inner product is cosine similarity. The index is built in chunks from
the memory-mapped parts, saved under ``<database>/index/`` with per-row image keys and label ids,
and loaded memory-mapped. GPU FAISS is used for flat and IVF indexes when it is installed and a
GPU is visible.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from ieiw.pipelines.replacement.database import ObjectDatabase, image_key
from ieiw.storage import fs
from ieiw.storage.optional import import_faiss

if TYPE_CHECKING:
    import faiss

INDEX_DIR = "index"
INDEX_FILE = "objects.faiss"


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
    gpu: Literal["auto", "never"] = "auto"
    chunk_rows: int = 65536


def gpu_available() -> bool:
    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


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

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def label_id(self, label: str | None) -> int:
        return self._label_index.get(label, -1) if label else -1

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities and rows of the ``k`` nearest objects of each query (rows -1 past the end)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self.index.search(queries, min(k, max(len(self), 1)))

    def save(self, db_url: str) -> str:
        faiss = import_faiss()
        folder = os.path.join(db_url, INDEX_DIR)
        os.makedirs(folder, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if hasattr(self.index, "getDevice") else self.index
        target = os.path.join(folder, INDEX_FILE)
        temporary = fs.temporary_name(target)
        faiss.write_index(cpu, temporary)  # FAISS writes the file itself: no second copy in memory
        os.replace(temporary, target)
        for name, array in (("image_keys.npy", self.image_keys), ("label_ids.npy", self.label_ids)):
            with fs.atomic_open(os.path.join(folder, name)) as handle:
                np.save(handle, array)
        info = {"kind": self.kind, "count": len(self), "labels": self.labels, "signature": self.signature}
        fs.write_bytes_atomic(os.path.join(folder, "index.json"), json.dumps(info).encode("utf-8"))
        return folder

    @classmethod
    def load(cls, db_url: str, config: IndexConfig | None = None) -> ObjectIndex:
        faiss = import_faiss()
        """Load a saved index memory-mapped (moved to the GPU where that applies)."""
        config = config or IndexConfig()
        folder = os.path.join(db_url, INDEX_DIR)
        info_path = os.path.join(folder, "index.json")
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
