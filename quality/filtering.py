"""The filter stage: apply the policy to scored candidate shards and write the final shards.

The final shards are a stage folder (:mod:`ieiw.storage.stage_folder`) whose fingerprint is the
policy (with its duplicate settings), the evaluation set by content, and the digests of the score and
candidates stages it reads. Two passes:

1. :func:`~ieiw.quality.build_flags.compute_flags` reads the scores of every committed candidate
   shard once (keys, hashes and image digests, no pixels) and flags duplicates across the build,
   evaluation-set leaks and pairs whose embeddings are missing from the cache. The stage's lease
   holder computes them (:func:`~ieiw.quality.build_flags.prepare_flags`) and keeps them in the stage
   folder (``quality/flags.parquet``), tagged with the stage's digest and the input they were
   computed over, so a rerun reuses only flags that belong to the same settings and the same input.
2. :func:`filter_shard` streams one candidate shard, looks up each sample's scores and flags, and
   :func:`run_filter_shard` commits kept samples and drops (with the rule that dropped them as
   ``drop_reason``) as one batch per candidate shard, named ``filter-<shard>``. Kept samples are
   copied byte for byte (:class:`~ieiw.storage.schema.EncodedSample`): their image members are the
   candidates' own bytes and only their ``json`` is rewritten, with the scores in it, the judge's
verdict (``judge``: model, rubric, scores, reasons) and, when the judge wrote one, its wording of the
instruction among ``instruction_alternatives`` (its ``source`` says which judge and rubric).

Build-wide flags depend on the whole input, so a filter stage is only valid for the input it was
computed over (:func:`filter_input`, recorded with the stage): when more candidate or score batches
have been committed since, the ``filter`` flow rebuilds it.

Every candidate sample becomes exactly one manifest row, so the final manifest's kept count and
drop reasons add up to the number of candidates.
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
from collections.abc import Iterator

import pandas as pd
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError
from tqdm import tqdm

from ieiw.quality.build_flags import prepare_flags
from ieiw.quality.duplicates import EvalSet
from ieiw.quality.embeddings import EmbeddingCache
from ieiw.quality.policy import FilterPolicy, evaluate
from ieiw.quality.scoring import (
    FLOAT_SCORES,
    JUDGE_COLUMNS,
    JUDGE_SCORES,
    VERIFY_COLUMNS,
    iter_groups_safely,
    read_scores,
    score_batch_name,
    shard_name,
)
from ieiw.quality.stage_target import StageTarget
from ieiw.quality.verifier import VERIFY_SCORES
from ieiw.storage import manifest
from ieiw.storage.commit import BatchReport
from ieiw.storage.schema import Drop, EncodedSample, Result, SampleMeta, stable_key
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import commit_samples

log = logging.getLogger(__name__)

STAGE = "filter"
MISSING_SCORES = "missing_scores"
MISSING_EMBEDDING = "missing_embedding"
CORRUPT_JSON = "corrupt_json"
CORRUPT_IMAGE = "corrupt_image"
SCORE_COLUMNS = [
    "key",
    "record_id",
    "task",
    "shard",
    "error",
    "error_detail",
    *FLOAT_SCORES,
    "phash_src",
    "phash_tgt",
    "digest_src",
    "digest_tgt",
    *JUDGE_COLUMNS,
    *VERIFY_COLUMNS,
    "fingerprint",
]


def filter_batch_name(shard_url: str) -> str:
    """The filter stage's batch of one candidate shard: fixed by the shard's name."""
    return f"{STAGE}-{shard_name(shard_url)}"


batch_for = filter_batch_name


def filter_input(shard_urls: list[str], scores_url: str) -> dict:
    """What a filter run computes over: the committed candidate shards and score batches, counted and
    digested. Recorded with the filter stage; a different one means the stage must be rebuilt."""
    shards = sorted(posixpath.basename(s) for s in shard_urls)
    scored = sorted(manifest.completed_batches(scores_url))
    return {
        "candidate_shards": len(shards),
        "score_batches": len(scored),
        "digest": stable_key("filter-input", shards, scored),
    }


def scores_for(scores_url: str, shard_urls: list[str], score_batches: set[str] | None = None) -> pd.DataFrame:
    """The committed scores of ``shard_urls`` (of the score batches in ``score_batches`` when given, so
    a batch committed while the filter runs is not half-seen)."""
    batches = manifest.completed_batches(scores_url) if score_batches is None else score_batches
    wanted = {posixpath.basename(s) for s in shard_urls if score_batch_name(s) in batches}
    scores = read_scores(scores_url, columns=SCORE_COLUMNS)
    return scores[scores["shard"].isin(wanted)].reset_index(drop=True)


def _scores_of(row: pd.Series) -> dict[str, float]:
    return {name: float(row[name]) for name in FLOAT_SCORES if not math.isnan(float(row[name]))}


def _text(row: pd.Series, column: str) -> str | None:
    value = row.get(column)
    return value if isinstance(value, str) and value else None


def _unscored(row: pd.Series) -> dict[str, tuple[str, str]]:
    """The scores the judge or the verifier could not give this sample, with why (its drop reason)."""
    out: dict[str, tuple[str, str]] = {}
    for error, detail, names in (
        ("judge_error", "judge_detail", JUDGE_SCORES),
        ("verify_error", None, VERIFY_SCORES),
    ):
        reason = _text(row, error)
        if reason:
            out.update(dict.fromkeys(names, (reason, (_text(row, detail) if detail else None) or reason)))
    return out


def judged_meta(meta: SampleMeta, row: pd.Series) -> SampleMeta:
    """``meta`` with the judge's verdict and its instruction (an alternative wording), when it judged."""
    rubric, model = _text(row, "judge_rubric"), _text(row, "judge_model")
    reasons = _text(row, "judge_reasons")
    if reasons is None or _text(row, "judge_error"):
        return meta
    scores = {c.removeprefix("judge_"): float(row[c]) for c in JUDGE_SCORES if not math.isnan(float(row[c]))}
    meta.judge = {"model": model, "rubric": rubric, "scores": scores, "reasons": json.loads(reasons)}
    rewritten = _text(row, "judge_instruction")
    if rewritten:
        source = f"judge:{model}#{rubric}"
        others = [a for a in meta.instruction_alternatives if a.get("source") != source]
        meta.instruction_alternatives = [*others, {"text": rewritten, "source": source}]
    return meta


def _member(members: dict[str, bytes], stem: str) -> bytes | None:
    for name, data in members.items():
        if name.split(".", 1)[0] == stem:
            return data
    return None


def _copied(meta: SampleMeta, members: dict[str, bytes]) -> EncodedSample:
    """The sample as its candidate's members, byte for byte, with ``meta`` as its new ``json``.
    The target's size is read from its header; nothing is decoded."""
    target = _member(members, "tgt")
    if target is None or _member(members, "src") is None:
        raise KeyError(f"sample has no src/tgt members (has {sorted(members)})")
    with Image.open(io.BytesIO(target)) as image:
        width, height = image.size
    images = {name: data for name, data in members.items() if name != "json"}
    return EncodedSample(meta=meta, members=images, width=int(width), height=int(height))


def filter_shard(
    shard_url: str,
    scores: pd.DataFrame,
    flags: pd.DataFrame | None,
    policy: FilterPolicy,
) -> Iterator[Result]:
    """One kept :class:`EncodedSample` or :class:`Drop` per candidate in ``shard_url`` (``scores`` may
    be the shard's rows only)."""
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
            unscored=_unscored(row),
        )
        if not verdict.kept:
            yield Drop(reason=verdict.reason, detail=verdict.detail, scores=scores_dict, **base)
            continue
        meta.scores = {**meta.scores, **scores_dict}
        meta = judged_meta(meta, row)
        try:
            yield _copied(meta, members)
        except (KeyError, UnidentifiedImageError, OSError, ValueError) as error:
            yield Drop(reason=CORRUPT_IMAGE, detail=str(error)[:300], **base)


def run_filter_shard(
    shard_url: str,
    scores: pd.DataFrame,
    flags: pd.DataFrame | None,
    policy: FilterPolicy,
    target: StageTarget,
    spec: ShardSpec | None = None,
) -> BatchReport:
    """Filter one candidate shard and commit it as the filter stage's batch (if ``target`` still
    holds the lease). ``scores`` and ``flags`` may be limited to the shard's keys."""
    return commit_samples(
        target.url,
        filter_batch_name(shard_url),
        filter_shard(shard_url, scores, flags, policy),
        spec,
        target.digest,
        target.holder,
        target.stage,
    )


def check_scores_cover_policy(scores: pd.DataFrame, policy: FilterPolicy) -> None:
    """Fail before writing anything if the policy bounds a score that was never computed (a judge or
    verifier that was asked but failed on every sample is computed: its samples drop with its reason)."""
    ok = scores[scores["error"].isna()]

    def computed(score: str) -> bool:
        if score not in ok:
            return False
        error = "judge_error" if score in JUDGE_SCORES else "verify_error" if score in VERIFY_SCORES else None
        return not len(ok) or ok[score].notna().any() or (error in ok and ok[error].notna().any())

    absent = sorted(s for s in policy.required_scores() if not computed(s))
    if absent:
        raise ValueError(
            f"the policy bounds {absent} but the scores table has no values for them: configure the "
            "models that compute them (aesthetic_checkpoint, giqa) or switch those rules off"
        )


def filter_shards(
    target: StageTarget,
    shard_urls: list[str],
    scores_url: str,
    policy: FilterPolicy,
    cache: EmbeddingCache | None = None,
    eval_set: EvalSet | None = None,
    spec: ShardSpec | None = None,
) -> list[BatchReport]:
    """Both passes over ``shard_urls`` in this process, skipping committed batches (the ``filter`` flow
    maps the second pass over workers instead). ``target`` is the open filter stage."""
    scores = scores_for(scores_url, shard_urls)
    check_scores_cover_policy(scores, policy)
    flags = prepare_flags(
        target, scores, policy, cache, eval_set, filter_input(shard_urls, scores_url)["digest"]
    )
    committed = manifest.completed_batches(target.url)
    reports = []
    for url in tqdm(shard_urls, desc="filter", unit="shard"):
        if filter_batch_name(url) in committed:
            reports.append(BatchReport(batch=filter_batch_name(url), skipped=True))
            continue
        reports.append(run_filter_shard(url, scores, flags, policy, target, spec))
    return reports
