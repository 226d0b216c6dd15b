"""KNN-GIQA reference indexes: build one from ``.npy`` embedding shards, save it, load it memory-mapped.

:mod:`ieiw.quality.giqa` scores images against the index; :mod:`ieiw.quality.giqa_references` writes the
``.npy`` shards from reference images when no published embeddings exist. Two kinds, chosen by size
(:func:`build_reference_index`):

- ``flat`` (exact, ``IndexFlat``): every distance is exact, scores are identical to brute force.
  Memory is ``4 * D`` bytes per vector (3 KB at D=768): fine up to a few million vectors.
  Supports L2 and L1. Saved as one file and loaded memory-mapped (``IO_FLAG_MMAP``).
- ``ivfpq`` (approximate, ``IVF<nlist>,PQ<m>``): trained on a sample, filled shard by shard into
  per-shard blocks, then merged into on-disk inverted lists (``reference.ivfdata``) that the OS
  pages in on demand. Each vector costs ``m`` bytes of PQ code plus an 8-byte id: with m=64,
  72 bytes instead of 3,072, so LAION-600M needs about 43 GB on disk instead of 1.8 TB.
  The trade: distances are PQ approximations and only ``nprobe`` of ``nlist`` lists are
  searched, so the nearest neighbour is sometimes missed and scores are approximate; rank
  order is what a threshold needs, and ``bench/giqa.py`` reports the Spearman correlation with
  exact scores (and the speed-up) for a setting. Raise ``m`` (bytes per vector) or ``nprobe``
  (time per query) to buy back accuracy. L2 only (PQ has no L1). Measured by ``bench/giqa.py`` on
  1M synthetic clustered 768-d vectors (2 CPU cores): IVF2048,PQ64 takes 79 bytes per vector
  (float32: 3,072) and ranks queries like exact search with Spearman 0.989 at nprobe 1 to 8,
  150x (nprobe 8) to 1,200x (nprobe 1) faster than brute force.

GPU FAISS is used when installed (``faiss-gpu``): k-means training on the GPU and exact indexes
searched there, one search at a time (:mod:`ieiw.quality.faiss_search`: GPU indexes are not
thread-safe, and scoring batches run in threads). The index directory must be a local path (FAISS
reads and maps local files); the ``.npy`` inputs may be any fsspec URL.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from ieiw.quality.faiss_search import search_guard
from ieiw.storage import fs
from ieiw.storage.optional import import_faiss

log = logging.getLogger(__name__)

Metric = Literal["l2", "l1"]
IndexKind = Literal["auto", "flat", "ivfpq"]
INDEX_FILE = "reference.index"
META_FILE = "reference.json"
IVFDATA_FILE = "reference.ivfdata"


class ReferenceIndexSettings(BaseModel):
    """How to build a reference index (see the module docstring for the recall/memory trade)."""

    model_config = ConfigDict(extra="forbid")

    kind: IndexKind = "auto"
    exact_max: int = 2_000_000  # "auto" picks the exact index up to this many vectors
    metric: Metric = "l2"
    nlist: int | None = None  # IVF lists; default about 4 * sqrt(N), at least 1
    pq_m: int = 64  # PQ bytes per vector; must divide the (PCA) dimension
    pca_dim: int | None = None
    train_size: int = 200_000
    add_chunk: int = 100_000
    features: str = "clip"
    seed: int = 0
    use_gpu: bool = True


class ReferenceIndexMeta(BaseModel):
    """Stored beside the index as ``reference.json``."""

    kind: Literal["flat", "ivfpq"]
    description: str
    metric: Metric
    dim: int
    ntotal: int
    features: str
    layout: Literal["single", "ondisk"]
    bytes_per_vector: float


def _faiss():
    return import_faiss()


def _faiss_metric(metric: Metric) -> int:
    faiss = _faiss()
    return {"l2": faiss.METRIC_L2, "l1": faiss.METRIC_L1}[metric]


def _gpus() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


# --- reading .npy embedding shards (local or fsspec) -------------------------------------------------


def npy_shape(url: str) -> tuple[int, ...]:
    """Shape of a ``.npy`` file from its header only."""
    filesystem, path = fs.get_fs(url)
    with filesystem.open(path, "rb") as handle:
        major, _ = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        )
        shape, _, _ = read_header(handle)
    return tuple(shape)


def open_npy(url: str) -> np.ndarray:
    """A ``.npy`` array: memory-mapped for local files, read into memory for remote ones."""
    filesystem, path = fs.get_fs(url)
    if "://" not in str(url) or str(url).startswith("file://"):
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with filesystem.open(path, "rb") as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def expand_npy_urls(urls: Sequence[str] | str) -> list[str]:
    """Directories become their sorted ``*.npy`` files; files stay."""
    if isinstance(urls, str):
        urls = [urls]
    out: list[str] = []
    for url in urls:
        out.extend([url] if str(url).endswith(".npy") else fs.list_files(url, ".npy"))
    if not out:
        raise FileNotFoundError(f"no .npy embedding files in {list(urls)}")
    return out


def _chunks(array: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(array), size):
        yield start, np.ascontiguousarray(array[start : start + size], dtype=np.float32)


def _training_sample(urls: list[str], shapes: list[tuple[int, ...]], size: int, seed: int) -> np.ndarray:
    """Rows drawn uniformly from all shards, proportionally to their sizes."""
    total = sum(s[0] for s in shapes)
    rng = np.random.default_rng(seed)
    parts = []
    for url, shape in zip(urls, shapes, strict=True):
        take = min(shape[0], math.ceil(size * shape[0] / max(total, 1)))
        if take:
            rows = np.sort(rng.choice(shape[0], take, replace=False))
            parts.append(np.asarray(open_npy(url)[rows], dtype=np.float32))
    return np.concatenate(parts)[:size]


# --- building ---------------------------------------------------------------------------------------


def index_description(kind: Literal["flat", "ivfpq"], ntotal: int, settings: ReferenceIndexSettings) -> str:
    """The ``faiss.index_factory`` string for a kind and size."""
    prefix = f"PCA{settings.pca_dim}," if settings.pca_dim else ""
    if kind == "flat":
        return prefix + "Flat"
    nlist = settings.nlist or max(1, int(4 * math.sqrt(max(ntotal, 1))))
    return prefix + f"IVF{nlist},PQ{settings.pq_m}x8"


def build_reference_index(
    npy_urls: Sequence[str] | str, out_dir: str, settings: ReferenceIndexSettings | None = None
) -> ReferenceIndexMeta:
    """Build the reference index from ``.npy`` embedding shards into the local directory ``out_dir``.

    Resumable: the trained empty index and each shard's block are kept until the final merge,
    and a rerun skips what exists. Memory is bounded by one chunk of one shard plus the index's
    coarse structures; the inverted lists are merged straight to disk.
    """
    settings = settings or ReferenceIndexSettings()
    urls = expand_npy_urls(npy_urls)
    shapes = [npy_shape(u) for u in urls]
    dims = {s[1] for s in shapes if len(s) == 2}
    if len(dims) != 1 or any(len(s) != 2 for s in shapes):
        raise ValueError(f"embedding shards must be 2-D with one dimension, got shapes {set(shapes)}")
    dim, ntotal = dims.pop(), sum(s[0] for s in shapes)
    if settings.metric == "l1" and settings.kind == "ivfpq":
        raise ValueError("PQ has no L1 distance: use kind='flat' for metric='l1'")
    kind = settings.kind
    if kind == "auto":
        kind = "flat" if ntotal <= settings.exact_max or settings.metric == "l1" else "ivfpq"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    description = index_description(kind, ntotal, settings)
    if kind == "flat":
        _build_flat(urls, out_dir, dim, description, settings)
    else:
        _build_ivfpq(urls, shapes, out_dir, dim, description, settings)
    meta = _measure(out_dir, kind, description, settings, dim, ntotal)
    Path(out_dir, META_FILE).write_text(meta.model_dump_json(indent=2))
    return meta


def _build_flat(urls: list[str], out_dir: str, dim: int, description: str, settings: ReferenceIndexSettings):
    faiss = _faiss()
    index = faiss.index_factory(dim, description, _faiss_metric(settings.metric))
    if not index.is_trained:  # PCA
        shapes = [npy_shape(u) for u in urls]
        index.train(_training_sample(urls, shapes, settings.train_size, settings.seed))
    for url in tqdm(urls, desc="reference index (exact)", unit="shard"):
        for _, chunk in _chunks(open_npy(url), settings.add_chunk):
            index.add(chunk)
    faiss.write_index(index, str(Path(out_dir, INDEX_FILE)))


def _build_ivfpq(
    urls: list[str],
    shapes: list[tuple[int, ...]],
    out_dir: str,
    dim: int,
    description: str,
    settings: ReferenceIndexSettings,
) -> None:
    from faiss.contrib.ondisk import merge_ondisk

    faiss = _faiss()
    trained_path = Path(out_dir, "trained.index")
    if not trained_path.exists():
        index = faiss.index_factory(dim, description, _faiss_metric(settings.metric))
        sample = _training_sample(urls, shapes, settings.train_size, settings.seed)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # only for polysemous search, which is not used; slow
        if settings.use_gpu and _gpus():
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
        log.info("training %s on %d vectors", description, len(sample))
        index.train(sample)
        faiss.write_index(index, str(trained_path) + ".tmp")
        os.replace(str(trained_path) + ".tmp", trained_path)
    blocks_dir = Path(out_dir, "blocks")
    blocks_dir.mkdir(exist_ok=True)
    blocks, offset = [], 0
    for number, (url, shape) in enumerate(
        tqdm(list(zip(urls, shapes, strict=True)), desc="reference blocks")
    ):
        block = blocks_dir / f"block-{number:05d}.index"
        blocks.append(str(block))
        if not block.exists():
            index = faiss.read_index(str(trained_path))
            for start, chunk in _chunks(open_npy(url), settings.add_chunk):
                index.add_with_ids(
                    chunk, np.arange(offset + start, offset + start + len(chunk), dtype=np.int64)
                )
            faiss.write_index(index, str(block) + ".tmp")
            os.replace(str(block) + ".tmp", block)
        offset += shape[0]
    index = faiss.read_index(str(trained_path))
    ivfdata = Path(out_dir, IVFDATA_FILE)
    if ivfdata.exists():
        ivfdata.unlink()
    merge_ondisk(index, blocks, str(ivfdata))
    faiss.write_index(index, str(Path(out_dir, INDEX_FILE)))
    for block in blocks:
        os.remove(block)
    blocks_dir.rmdir()
    trained_path.unlink()


def _measure(out_dir, kind, description, settings, dim, ntotal) -> ReferenceIndexMeta:
    files = [Path(out_dir, INDEX_FILE), Path(out_dir, IVFDATA_FILE)]
    size = sum(f.stat().st_size for f in files if f.exists())
    return ReferenceIndexMeta(
        kind=kind,
        description=description,
        metric=settings.metric,
        dim=dim,
        ntotal=ntotal,
        features=settings.features,
        layout="ondisk" if kind == "ivfpq" else "single",
        bytes_per_vector=round(size / max(ntotal, 1), 2),
    )


# --- loading -------------------------------------------------------------------------------------


class ReferenceIndex:
    """A loaded reference index and its metadata."""

    def __init__(self, index, meta: ReferenceIndexMeta) -> None:
        self.index = index
        self.meta = meta
        self._guard = search_guard(index)  # a lock for a GPU index: scoring threads take turns

    def set_nprobe(self, nprobe: int) -> None:
        if self.meta.kind == "ivfpq":
            _faiss().extract_index_ivf(self.index).nprobe = nprobe

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)`` in the metric's own units (L2, not squared L2)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.meta.dim:
            raise ValueError(f"queries must be (N, {self.meta.dim}), got {queries.shape}")
        with self._guard:
            distances, ids = self.index.search(queries, k)
        if self.meta.metric == "l2":
            distances = np.sqrt(np.maximum(distances, 0.0))
        return distances, ids


def load_reference_index(index_dir: str, use_gpu: bool = True) -> ReferenceIndex:
    """Load an index written by :func:`build_reference_index`, memory-mapped, never read whole."""
    faiss = _faiss()
    meta_path = Path(index_dir, META_FILE)
    if not meta_path.is_file():
        raise FileNotFoundError(f"{index_dir} has no {META_FILE}: build it with build_reference_index")
    meta = ReferenceIndexMeta.model_validate_json(meta_path.read_text())
    path = str(Path(index_dir, INDEX_FILE))
    if meta.layout == "ondisk":
        # The on-disk inverted lists map reference.ivfdata themselves; IO_FLAG_MMAP must not be added.
        index = faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR)
    else:
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP)
        if use_gpu and _gpus():
            index = faiss.index_cpu_to_all_gpus(index)
    return ReferenceIndex(index, meta)
