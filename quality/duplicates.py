"""Duplicates: perceptual hashes and CLIP near-duplicates, within a build and against an eval set.

Two signals, both cheap next to CLIP itself:

- a 64-bit perceptual hash (``imagehash.phash``) per image, compared by Hamming distance with a
  FAISS binary index, which catches re-encodes, resizes and small crops;
- cosine similarity of L2-normalised CLIP embeddings, which also catches the same scene shot twice.

An editing pair is a duplicate of an earlier pair when *both* its source and its target match
(many pairs legitimately share a source photo: one per removed object). A pair leaks the
evaluation set when *either* image matches an evaluation image. Decisions are deterministic: pairs
are visited in key order and the first of a group is kept.

The within-build search holds the pair embeddings seen so far in an exact inner-product index
(``4 * 2D`` bytes per pair, about 6 GB for a million ViT-L/14 pairs) and the hashes in a binary
index (8 bytes per image).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from ieiw.quality.similarity import normalize
from ieiw.storage.optional import import_faiss

DUPLICATE = "duplicate"
EVAL_LEAK = "eval_leak"


class DuplicateSettings(BaseModel):
    """Thresholds of both signals; a ``None`` threshold switches that signal off."""

    model_config = ConfigDict(extra="forbid")

    phash_max_hamming: int | None = 4
    clip_min_cosine: float | None = 0.97
    eval_phash_max_hamming: int | None = 6
    eval_clip_min_cosine: float | None = 0.95


def phash(image: np.ndarray) -> int:
    """The 64-bit perceptual hash of an HxWx3 ``uint8`` image, as an unsigned integer."""
    return int(str(imagehash.phash(Image.fromarray(image))), 16)


def hamming(a: int, b: int) -> int:
    return int(bin(int(a) ^ int(b)).count("1"))


def _codes(hashes: Sequence[int]) -> np.ndarray:
    """Hashes as ``(N, 8)`` uint8 codes for FAISS binary indexes."""
    return np.asarray(hashes, dtype=np.uint64).reshape(-1, 1).view(np.uint8).reshape(-1, 8).copy()


class HashIndex:
    """Exact Hamming search over 64-bit hashes (``faiss.IndexBinaryFlat``)."""

    def __init__(self) -> None:
        faiss = import_faiss()

        self.index = faiss.IndexBinaryFlat(64)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, hashes: Sequence[int]) -> None:
        if len(hashes):
            self.index.add(_codes(hashes))

    def nearest(self, hashes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Distance and row of the nearest stored hash (distance 65, row -1 when empty)."""
        if not len(hashes) or not len(self):
            return np.full(len(hashes), 65), np.full(len(hashes), -1)
        distances, ids = self.index.search(_codes(hashes), 1)
        return distances[:, 0].astype(int), ids[:, 0]


class VectorIndex:
    """Exact inner-product search over unit vectors (``faiss.IndexFlatIP``)."""

    def __init__(self, dim: int) -> None:
        faiss = import_faiss()

        self.index = faiss.IndexFlatIP(dim)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        if len(vectors):
            self.index.add(np.ascontiguousarray(normalize(vectors)))

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosine and row of the nearest stored vector (-2 and -1 when empty)."""
        if not len(vectors) or not len(self):
            return np.full(len(vectors), -2.0), np.full(len(vectors), -1)
        sims, ids = self.index.search(np.ascontiguousarray(normalize(vectors)), 1)
        return sims[:, 0], ids[:, 0]


@dataclass
class PairFingerprints:
    """Row-aligned fingerprints of pairs: keys, hashes and (optionally) CLIP embeddings.

    Embeddings are given as arrays or, to stream them from a cache batch by batch, as a function
    from row numbers to ``(source, target)`` arrays plus their dimension ``dim``.
    """

    keys: list[str]
    src_hash: np.ndarray
    tgt_hash: np.ndarray
    src_emb: np.ndarray | None = None
    tgt_emb: np.ndarray | None = None
    embeddings: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    dim: int | None = None

    def pair_embeddings(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.embeddings is not None:
            return self.embeddings(rows)
        return self.src_emb[rows], self.tgt_emb[rows]

    @property
    def embedding_dim(self) -> int | None:
        if self.embeddings is not None:
            return self.dim
        return None if self.src_emb is None or self.tgt_emb is None else int(self.src_emb.shape[1])


def find_duplicates(
    pairs: PairFingerprints, settings: DuplicateSettings, batch: int = 1024
) -> dict[str, str]:
    """``{key: "<signal>:<key of the earlier pair>"}`` for every pair that repeats an earlier one.

    phash: both source and target hashes within ``phash_max_hamming`` of one earlier pair's (the
    8 nearest earlier pairs by combined 128-bit distance are checked). CLIP: the mean of source and
    target cosines with one earlier pair at least ``clip_min_cosine``. Batches are searched against
    the pairs kept so far in one call and among themselves with a matrix; the result does not
    depend on the batch size.
    """
    order = sorted(range(len(pairs.keys)), key=lambda i: pairs.keys[i])
    src_hash = np.asarray(pairs.src_hash, dtype=np.uint64)
    tgt_hash = np.asarray(pairs.tgt_hash, dtype=np.uint64)
    use_hash = settings.phash_max_hamming is not None
    use_clip = settings.clip_min_cosine is not None and pairs.embedding_dim is not None
    faiss = import_faiss()

    hashes = faiss.IndexBinaryFlat(128)
    vectors = VectorIndex(2 * pairs.embedding_dim) if use_clip else None
    kept: list[int] = []
    found: dict[str, str] = {}
    for start in range(0, len(order), batch):
        rows = np.asarray(order[start : start + batch])
        pair_vectors = _pair_vectors(pairs, rows) if use_clip else None
        earlier = _match_kept(
            pairs.keys, rows, src_hash, tgt_hash, hashes, kept, pair_vectors, vectors, settings
        )
        if use_hash:
            same_src = np.bitwise_count(src_hash[rows][:, None] ^ src_hash[rows][None, :])
            same_tgt = np.bitwise_count(tgt_hash[rows][:, None] ^ tgt_hash[rows][None, :])
            hash_near = (same_src <= settings.phash_max_hamming) & (same_tgt <= settings.phash_max_hamming)
        if use_clip:
            clip_near = (pair_vectors @ pair_vectors.T) >= settings.clip_min_cosine
        accepted: list[int] = []
        for j, row in enumerate(rows):
            match = earlier[j]
            for i in accepted:
                if match is not None:
                    break
                if use_hash and hash_near[j, i]:
                    match = f"phash:{pairs.keys[rows[i]]}"
                elif use_clip and clip_near[j, i]:
                    match = f"clip:{pairs.keys[rows[i]]}"
            if match is None:
                accepted.append(j)
            else:
                found[pairs.keys[row]] = match
        new = rows[accepted]
        hashes.add(_codes128(src_hash[new], tgt_hash[new]))
        if vectors is not None:
            vectors.index.add(np.ascontiguousarray(pair_vectors[accepted]))
        kept.extend(int(r) for r in new)
    return found


def _pair_vectors(pairs: PairFingerprints, rows: np.ndarray) -> np.ndarray:
    """Unit pair vectors whose inner product is the mean of the source and target cosines."""
    src, tgt = pairs.pair_embeddings(rows)
    both = np.concatenate([normalize(src), normalize(tgt)], axis=1)
    return (both / np.sqrt(2.0)).astype(np.float32)


def _codes128(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    return np.concatenate([_codes(src), _codes(tgt)], axis=1)


def _match_kept(
    keys, rows, src_hash, tgt_hash, hashes, kept, pair_vectors, vectors, settings
) -> list[str | None]:
    """For each row of a batch, the earlier kept pair it repeats (or None)."""
    out: list[str | None] = [None] * len(rows)
    if not kept:
        return out
    if settings.phash_max_hamming is not None:
        _, ids = hashes.search(_codes128(src_hash[rows], tgt_hash[rows]), min(8, len(kept)))
        for j, candidates in enumerate(ids):
            for c in candidates:
                if c < 0:
                    continue
                other = kept[int(c)]
                if (
                    hamming(src_hash[rows[j]], src_hash[other]) <= settings.phash_max_hamming
                    and hamming(tgt_hash[rows[j]], tgt_hash[other]) <= settings.phash_max_hamming
                ):
                    out[j] = f"phash:{keys[other]}"
                    break
    if vectors is not None and pair_vectors is not None:
        sims, ids = vectors.index.search(np.ascontiguousarray(pair_vectors), 1)
        for j in range(len(rows)):
            if out[j] is None and ids[j, 0] >= 0 and sims[j, 0] >= settings.clip_min_cosine:
                out[j] = f"clip:{keys[kept[int(ids[j, 0])]]}"
    return out


class EvalSet:
    """Fingerprints of held-out evaluation images that must never appear in training shards."""

    def __init__(self, hashes: Sequence[int], embeddings: np.ndarray | None, names: Sequence[str]) -> None:
        self.names = list(names)
        self.hashes = HashIndex()
        self.hashes.add(list(hashes))
        self.vectors: VectorIndex | None = None
        if embeddings is not None and len(embeddings):
            self.vectors = VectorIndex(embeddings.shape[1])
            self.vectors.add(embeddings)

    @classmethod
    def from_images(cls, images: Sequence[np.ndarray], names: Sequence[str], embedder=None) -> EvalSet:
        """Hash (and, given a :class:`~quality.embeddings.ClipEmbedder`, embed) the evaluation images."""
        embeddings = embedder.embed_images(list(images)) if embedder is not None else None
        return cls([phash(image) for image in images], embeddings, names)

    def leaks(
        self,
        hashes: Sequence[int],
        embeddings: np.ndarray | None,
        settings: DuplicateSettings,
    ) -> list[str | None]:
        """Per image: ``"<signal>:<eval image name>"`` if it matches an evaluation image, else None."""
        out: list[str | None] = [None] * len(hashes)
        if settings.eval_phash_max_hamming is not None:
            distances, rows = self.hashes.nearest(hashes)
            for i, (d, r) in enumerate(zip(distances, rows, strict=True)):
                if r >= 0 and d <= settings.eval_phash_max_hamming:
                    out[i] = f"phash:{self.names[int(r)]}"
        if settings.eval_clip_min_cosine is not None and embeddings is not None and self.vectors is not None:
            sims, rows = self.vectors.nearest(embeddings)
            for i, (s, r) in enumerate(zip(sims, rows, strict=True)):
                if out[i] is None and r >= 0 and s >= settings.eval_clip_min_cosine:
                    out[i] = f"clip:{self.names[int(r)]}"
        return out
