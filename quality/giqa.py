"""KNN-GIQA: an image's quality is how close its features lie to a large set of real photos.

As its authors define it (GIQA, Gu et al. 2020), the score of an image with features ``x`` is

    score(x) = sum over the K nearest reference features r of 1 / distance(x, r)

Their code uses InceptionV3 pool features, L1 distance, optional PCA and K=1. Here the features,
the metric and K are configurable:

- ``features="clip"`` (default): L2-normalised CLIP image embeddings, the same ones the aesthetic
  head reads, and the ones LAION publishes for its 5B images as ``.npy`` shards, so a LAION-scale
  reference index costs no image decoding at all. Use ``metric="l2"`` with them.
- ``features="inception"``: torchvision InceptionV3 2048-d pool features, the authors' choice;
  pair it with ``metric="l1"`` and the exact index to reproduce their numbers.

Scores are looked up in a reference index built, saved and memory-mapped by :mod:`ieiw.quality.giqa_index`
(exact for small sets, IVF-PQ on disk at LAION scale); :func:`brute_force_giqa` is the exact
computation the index is checked against.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from ieiw.quality.fixed_batches import padded_rows
from ieiw.quality.giqa_index import Metric, ReferenceIndex, load_reference_index
from ieiw.storage.config import model_ref, operational

QUERIES = 64  # queries per search: one fixed shape for every call


class GiqaConfig(BaseModel):
    """How to score: which index, K, how many IVF lists to probe, and which features."""

    model_config = ConfigDict(extra="forbid")

    index_dir: str = model_ref(identity="index_identity")  # the reference index, by its content
    k: int = 1
    nprobe: int = 32
    eps: float = 1e-6
    use_gpu: bool = operational(True)
    inception_checkpoint: str | None = model_ref(None)  # for an index built on inception features

    def index_identity(self, index_dir: str) -> str:
        """The reference index by its content."""
        from ieiw.quality.identities import reference_index_identity

        return reference_index_identity(index_dir)


def giqa_from_distances(
    distances: np.ndarray, ids: np.ndarray | None = None, eps: float = 1e-6
) -> np.ndarray:
    """Sum of 1/distance over the K neighbours found (missing neighbours, id -1, add nothing)."""
    inverse = 1.0 / np.maximum(np.asarray(distances, dtype=np.float64), eps)
    if ids is not None:
        inverse = np.where(ids >= 0, inverse, 0.0)
    return inverse.sum(axis=1).astype(np.float32)


class KnnGiqa:
    """KNN-GIQA scorer over a loaded reference index (load once per worker, score many batches)."""

    def __init__(self, reference: ReferenceIndex, k: int = 1, nprobe: int = 32, eps: float = 1e-6) -> None:
        if k < 1:
            raise ValueError("K must be at least 1")
        self.reference = reference
        self.k = k
        self.eps = eps
        reference.set_nprobe(nprobe)

    @classmethod
    def from_config(cls, config: GiqaConfig) -> KnnGiqa:
        return cls(
            load_reference_index(config.index_dir, config.use_gpu), config.k, config.nprobe, config.eps
        )

    @property
    def features(self) -> str:
        return self.reference.meta.features

    def score(self, features: np.ndarray) -> np.ndarray:
        """The GIQA score of each feature row. Queries are searched ``QUERIES`` at a time exactly
        (padded, see :mod:`ieiw.quality.fixed_batches`): faiss picks its distance kernel by the number
        of queries, so a score must not depend on how many others were searched with it."""
        if len(features) == 0:
            return np.zeros(0, np.float32)
        out = []
        for block, real in padded_rows(np.asarray(features, dtype=np.float32), QUERIES):
            distances, ids = self.reference.search(block, self.k)
            out.append(giqa_from_distances(distances[:real], ids[:real], self.eps))
        return np.concatenate(out)


def brute_force_giqa(
    queries: np.ndarray,
    references: np.ndarray,
    k: int = 1,
    metric: Metric = "l2",
    eps: float = 1e-6,
    block: int = 50_000,
) -> np.ndarray:
    """The reference computation: every query against every reference, exact distances."""
    queries = np.asarray(queries, dtype=np.float32)
    best = np.full((len(queries), k), np.inf, dtype=np.float64)
    q_norms = (queries.astype(np.float64) ** 2).sum(1)[:, None]
    for start in range(0, len(references), block):
        refs = np.asarray(references[start : start + block], dtype=np.float32)
        if metric == "l2":
            squared = q_norms + (refs.astype(np.float64) ** 2).sum(1)[None, :] - 2.0 * (queries @ refs.T)
            dist = np.sqrt(np.maximum(squared, 0.0))
        else:
            dist = np.abs(queries[:, None, :] - refs[None, :, :]).sum(-1, dtype=np.float64)
        merged = np.concatenate([best, dist], axis=1)
        best = np.sort(np.partition(merged, k - 1, axis=1)[:, :k], axis=1) if merged.shape[1] > k else merged
    return giqa_from_distances(best, None, eps)
