"""The filter stage: apply the policy to scored candidate shards and write the final shards.

Two passes:

1. :func:`compute_flags` reads the whole scores table once (keys, hashes and image digests, no
   pixels) and flags duplicates across the build, evaluation-set leaks and pairs whose
   embeddings are missing from the cache. The flags are stored at ``<out_url>/quality/flags.parquet``.
2. :func:`run_filter_shard` streams one candidate shard, looks up each sample's scores and flags,
   and commits kept samples (scores inside each sample's ``json``) and drops (with the rule that
   dropped them as ``drop_reason``) with :func:`ieiw.storage.commit.commit_batch`. One batch per
   candidate shard, named ``filter-<shard>``; a rerun skips committed batches.

Every candidate sample becomes exactly one manifest row, so the final manifest's kept count and
drop reasons add up to the number of candidates.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import UnidentifiedImageError
from pydantic import ValidationError
from tqdm import tqdm

from ieiw.quality.duplicates import EvalSet, PairFingerprints, find_duplicates
from ieiw.quality.embeddings import EmbeddingCache
from ieiw.quality.policy import FilterPolicy, evaluate
from ieiw.quality.scoring import FLOAT_SCORES, iter_groups_safely, read_scores, shard_name
from ieiw.storage import fs, manifest
from ieiw.storage.commit import BatchReport, commit_batch
from ieiw.storage.schema import Drop, Result, SampleMeta
from ieiw.storage.shards import ShardSpec, decode_sample, expand_shard_urls

log = logging.getLogger(__name__)

FLAGS_PATH = "quality/flags.parquet"
MISSING_SCORES = "missing_scores"
MISSING_EMBEDDING = "missing_embedding"
CORRUPT_JSON = "corrupt_json"
CORRUPT_IMAGE = "corrupt_image"
FLAG_COLUMNS = ["key", "duplicate_of", "eval_leak", "missing_embedding"]


def batch_for(shard_url: str) -> str:
    return f"filter-{shard_name(shard_url)}"


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


def write_flags(out_url: str, flags: pd.DataFrame) -> str:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(flags, preserve_index=False), buffer)
    url = fs.join(out_url, FLAGS_PATH)
    fs.write_bytes_atomic(url, buffer.getvalue())
    return url


def read_flags(out_url: str) -> pd.DataFrame | None:
    url = fs.join(out_url, FLAGS_PATH)
    if not fs.exists(url):
        return None
    return pd.read_parquet(io.BytesIO(fs.read_bytes(url)))


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


def _scores_of(row: pd.Series) -> dict[str, float]:
    return {name: float(row[name]) for name in FLOAT_SCORES if not math.isnan(float(row[name]))}


def filter_shard(
    shard_url: str,
    scores: pd.DataFrame,
    flags: pd.DataFrame | None,
    policy: FilterPolicy,
) -> Iterator[Result]:
    """One Sample or Drop per candidate in ``shard_url`` (``scores`` may be the shard's part only)."""
    by_key = scores.set_index("key")
    flag_by_key = flags.set_index("key") if flags is not None and len(flags) else None
    for key, members in iter_groups_safely(shard_url):
        try:
            meta = SampleMeta.model_validate_json(members["json"])
        except (KeyError, ValidationError, ValueError) as error:
            yield Drop(key=key, reason=CORRUPT_JSON, detail=str(error)[:300])
            continue
        base = {
            "key": meta.key,
            "record_id": meta.record_id,
            "task": str(meta.task),
            "provenance": meta.provenance,
        }
        if key not in by_key.index:
            yield Drop(reason=MISSING_SCORES, detail="no row in the scores table", **base)
            continue
        row = by_key.loc[key]
        if isinstance(row.get("error"), str):
            yield Drop(reason=row["error"], detail=str(row.get("error_detail") or ""), **base)
            continue
        scores_dict = _scores_of(row)
        flag = flag_by_key.loc[key] if flag_by_key is not None and key in flag_by_key.index else None
        if flag is not None and bool(flag["missing_embedding"]):
            yield Drop(
                reason=MISSING_EMBEDDING,
                detail="an image embedding is missing from the cache",
                scores=scores_dict,
                **base,
            )
            continue
        verdict = evaluate(
            policy,
            str(meta.task),
            scores_dict,
            duplicate_of=flag["duplicate_of"]
            if flag is not None and isinstance(flag["duplicate_of"], str)
            else None,
            eval_leak=flag["eval_leak"] if flag is not None and isinstance(flag["eval_leak"], str) else None,
        )
        if not verdict.kept:
            yield Drop(reason=verdict.reason, detail=verdict.detail, scores=scores_dict, **base)
            continue
        try:
            sample = decode_sample(members)
        except (KeyError, UnidentifiedImageError, OSError, ValueError) as error:
            yield Drop(reason=CORRUPT_IMAGE, detail=str(error)[:300], **base)
            continue
        sample.meta.scores = {**sample.meta.scores, **scores_dict}
        yield sample


def run_filter_shard(
    shard_url: str,
    scores_url: str,
    out_url: str,
    policy: FilterPolicy,
    flags: pd.DataFrame | None,
    spec: ShardSpec | None = None,
) -> BatchReport:
    """Filter one candidate shard into ``out_url`` unless its batch is already committed."""
    batch = batch_for(shard_url)
    if batch in manifest.completed_batches(out_url):
        return BatchReport(batch=batch, skipped=True)
    scores = read_scores(scores_url, shard_url)
    return commit_batch(filter_shard(shard_url, scores, flags, policy), out_url, batch, spec)


def check_scores_cover_policy(scores: pd.DataFrame, policy: FilterPolicy) -> None:
    """Fail before writing anything if the policy bounds a score that was never computed."""
    ok = scores[scores["error"].isna()]
    absent = sorted(s for s in policy.required_scores() if s not in ok or (len(ok) and ok[s].isna().all()))
    if absent:
        raise ValueError(
            f"the policy bounds {absent} but the scores table has no values for them: configure the "
            "models that compute them (aesthetic_checkpoint, giqa) or switch those rules off"
        )


def filter_shards(
    shard_urls: list[str],
    scores_url: str,
    out_url: str,
    policy: FilterPolicy,
    cache: EmbeddingCache | None = None,
    eval_set: EvalSet | None = None,
    spec: ShardSpec | None = None,
) -> list[BatchReport]:
    """Both passes over all shards, as plain Python (the ``filter`` flow maps the second pass)."""
    flags = prepare_flags(scores_url, out_url, policy, cache, eval_set)
    return [
        run_filter_shard(url, scores_url, out_url, policy, flags, spec)
        for url in tqdm(shard_urls, desc="filter", unit="shard")
    ]


def prepare_flags(
    scores_url: str,
    out_url: str,
    policy: FilterPolicy,
    cache: EmbeddingCache | None,
    eval_set: EvalSet | None,
) -> pd.DataFrame:
    """Check the scores against the policy and compute the flags once (a rerun reads them back)."""
    columns = ["key", "error", *FLOAT_SCORES, "phash_src", "phash_tgt", "digest_src", "digest_tgt"]
    scores = read_scores(scores_url, columns=columns)
    check_scores_cover_policy(scores, policy)
    flags = read_flags(out_url)
    if flags is None:
        flags = compute_flags(scores, policy, cache, eval_set)
        write_flags(out_url, flags)
    return flags
