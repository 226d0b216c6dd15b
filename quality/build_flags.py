"""The filter's build-wide flags: duplicates across the whole build, evaluation-set leaks and pairs
whose embeddings are missing from the cache, computed once from the scores (keys, hashes and image
digests, no pixels) on the lead of a filter run (:class:`ieiw.quality.filtering.FilterStage`) and kept
in its folder for people (``quality/flags.parquet``), tagged with the stage's digest and the input they
were computed over. They are a function of that input: a resumed run computes the same ones."""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import UnidentifiedImageError
from pydantic import ValidationError

from ieiw.quality.duplicates import EvalSet, PairFingerprints, find_duplicates
from ieiw.quality.embeddings import EmbeddingCache
from ieiw.quality.policy import FilterPolicy
from ieiw.quality.scoring import iter_groups_safely
from ieiw.storage import fs
from ieiw.storage.lease import check_holder
from ieiw.storage.shards import decode_sample, expand_shard_urls

log = logging.getLogger(__name__)

FLAGS_PATH = "quality/flags.parquet"
FLAG_COLUMNS = ["key", "duplicate_of", "eval_leak", "missing_embedding"]
_FLAGS_FINGERPRINT = b"ieiw.fingerprint"
_FLAGS_INPUT = b"ieiw.input"


def compute_flags(
    scores: pd.DataFrame,
    policy: FilterPolicy,
    cache: EmbeddingCache | None = None,
    eval_set: EvalSet | None = None,
    batch: int = 1024,
) -> pd.DataFrame:
    """Duplicate, eval-leak and missing-embedding flags of the scored samples (only flagged rows)."""
    settings = policy.duplicates
    ok = scores[scores["error"].isna()].sort_values("key").reset_index(drop=True)
    keys = ok["key"].tolist()
    missing = np.zeros(len(ok), dtype=bool)
    wants_clip = cache is not None and (
        settings.clip_min_cosine is not None
        or (eval_set is not None and settings.eval_clip_min_cosine is not None)
    )
    if wants_clip:
        for start in range(0, len(ok), 65536):
            part = ok.iloc[start : start + 65536]
            lacking = set(cache.missing(part["digest_src"].tolist() + part["digest_tgt"].tolist()))
            missing[start : start + len(part)] = [
                s in lacking or t in lacking
                for s, t in zip(part["digest_src"], part["digest_tgt"], strict=True)
            ]
    present = np.flatnonzero(~missing)
    src_digests = ok["digest_src"].to_numpy()
    tgt_digests = ok["digest_tgt"].to_numpy()

    def embeddings(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = present[rows]
        wanted = list(src_digests[rows]) + list(tgt_digests[rows])
        found = cache.get(wanted)
        vectors = np.stack([found[d] for d in wanted])
        return vectors[: len(rows)], vectors[len(rows) :]

    dim = None
    if wants_clip and len(present):
        dim = int(next(iter(cache.get([src_digests[present[0]]]).values())).shape[0])
    pairs = PairFingerprints(
        keys=[keys[i] for i in present],
        src_hash=ok["phash_src"].to_numpy(np.uint64)[present],
        tgt_hash=ok["phash_tgt"].to_numpy(np.uint64)[present],
        embeddings=embeddings if wants_clip else None,
        dim=dim,
    )
    duplicates = find_duplicates(pairs, settings, batch=batch)
    leaks: dict[str, str] = {}
    if eval_set is not None:
        for start in range(0, len(present), batch):
            rows = np.arange(start, min(start + batch, len(present)))
            hashes = list(pairs.src_hash[rows]) + list(pairs.tgt_hash[rows])
            vectors = np.concatenate(embeddings(rows)) if wants_clip else None
            found = eval_set.leaks(hashes, vectors, settings)
            for j, row in enumerate(rows):
                leak = found[j] or found[j + len(rows)]
                if leak:
                    leaks[pairs.keys[row]] = leak
    flagged = sorted(set(duplicates) | set(leaks) | {keys[i] for i in np.flatnonzero(missing)})
    missing_keys = {keys[i] for i in np.flatnonzero(missing)}
    return pd.DataFrame(
        {
            "key": flagged,
            "duplicate_of": [duplicates.get(k) for k in flagged],
            "eval_leak": [leaks.get(k) for k in flagged],
            "missing_embedding": [k in missing_keys for k in flagged],
        },
        columns=FLAG_COLUMNS,
    )


def write_flags(writer: Any, flags: pd.DataFrame, input_key: str | None) -> str:
    """Keep the flags in the filter's stage folder, tagged with its digest and input; ``writer`` is the
    open stage (:class:`~ieiw.storage.stage_folder.StageWriter`: only its lease holder writes)."""
    check_holder(writer.url, writer.stage, writer.holder)
    table = pa.Table.from_pandas(flags, preserve_index=False)
    table = table.replace_schema_metadata(
        {_FLAGS_FINGERPRINT: writer.digest.encode(), _FLAGS_INPUT: str(input_key).encode()}
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    url = fs.join(writer.url, FLAGS_PATH)
    fs.write_bytes_atomic(url, buffer.getvalue())
    return url


def read_flags(
    out_url: str, fingerprint: str | None = None, input_digest: str | None = None
) -> pd.DataFrame | None:
    """The flags kept in the filter stage, or None when there are none or (given ``fingerprint`` /
    ``input_digest``) they were computed with other settings or over another input."""
    url = fs.join(out_url, FLAGS_PATH)
    if not fs.exists(url):
        return None
    table = pq.read_table(io.BytesIO(fs.read_bytes(url)))
    meta = table.schema.metadata or {}
    if fingerprint is not None and meta.get(_FLAGS_FINGERPRINT) != fingerprint.encode():
        return None
    if input_digest is not None and meta.get(_FLAGS_INPUT) != input_digest.encode():
        return None
    return table.replace_schema_metadata(None).to_pandas()


def eval_set_from_urls(urls: list[str], embedder=None) -> EvalSet:
    """An :class:`EvalSet` from image files or directories, or shard directories (both images of a pair)."""
    from ieiw.quality.giqa_references import iter_reference_images

    images: list[np.ndarray] = []
    names: list[str] = []
    shards = [u for u in urls if u.endswith(".tar")] + [
        s for u in urls if not u.endswith(".tar") for s in expand_shard_urls([u])
    ]
    for sample in _iter_shard_samples(shards):
        images += [sample.source, sample.target]
        names += [f"{sample.key}.src", f"{sample.key}.tgt"]
    for number, image in enumerate(iter_reference_images([u for u in urls if not u.endswith(".tar")])):
        if image is not None:
            images.append(image)
            names.append(f"image-{number}")
    if not images:
        raise FileNotFoundError(f"no evaluation images in {urls}")
    return EvalSet.from_images(images, names, embedder)


def _iter_shard_samples(shards: list[str]):
    for url in shards:
        for _, members in iter_groups_safely(url):
            try:
                yield decode_sample(members)
            except (KeyError, ValidationError, UnidentifiedImageError, OSError, ValueError) as error:
                log.warning("evaluation sample in %s unreadable: %s", url, error)


def flags_for(flags: pd.DataFrame | None, keys) -> pd.DataFrame | None:
    """The flag rows of ``keys`` (what one shard's task needs)."""
    if flags is None:
        return None
    return flags[flags["key"].isin(set(keys))].reset_index(drop=True)
