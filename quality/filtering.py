"""The filter stage: apply the policy to scored candidate shards and write the final shards.

:class:`FilterStage` is a ``samples`` stage of the one stage contract (:mod:`ieiw.storage.stage`): its
input is the candidate stage's committed shards, one shard per batch, and its fingerprint is the policy
(with its duplicate settings), the evaluation set by content, and the recorded digests of the score and
candidates stages it reads. It is opened only when the score stage holds scores of this config's scoring
section (else :class:`~ieiw.storage.stage_folder.StageChanged` names what differs).

1. On the lead, :meth:`FilterStage.records` reads the scores of every committed candidate shard once
   (keys, hashes and image digests, no pixels) and computes the build-wide flags
   (:func:`~ieiw.quality.build_flags.compute_flags`): duplicates across the build, evaluation-set leaks
   and pairs whose embeddings are missing from the cache. Each record is one shard with its own scores
   and flags.
2. On the workers, :func:`filter_shard` streams one candidate shard and turns every sample into a kept
   sample or a drop (with the rule that dropped it as ``drop_reason``). Kept samples are copied byte
   for byte (:class:`~ieiw.storage.schema.EncodedSample`): their image members are the candidates' own
   bytes and only their ``json`` is rewritten, with the scores in it, the judge's verdict (``judge``:
   model, rubric, scores, reasons) and, when the judge wrote one, its wording of the instruction among
   ``instruction_alternatives`` (its ``source`` says which judge and rubric).
3. :meth:`FilterStage.finish` writes the report (histograms, drop counts, pages) and keeps the flags.

Build-wide flags depend on the whole input, so the stage is ``whole_input``: its input key names the
committed candidate shards and the scored ones, and when more have been committed since it was made,
the runner rebuilds it with a warning.

Every candidate sample becomes exactly one manifest row, so the final manifest's kept count and
drop reasons add up to the number of candidates.
"""

from __future__ import annotations

import io
import json
import logging
import math
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from ieiw.quality.build_flags import compute_flags, eval_set_from_urls, flags_for, write_flags
from ieiw.quality.embeddings import ClipEmbedder, EmbeddingCache
from ieiw.quality.identities import upstream_digest
from ieiw.quality.policy import FilterPolicy, evaluate
from ieiw.quality.report import write_report
from ieiw.quality.scoring import (
    FLOAT_SCORES,
    JUDGE_COLUMNS,
    JUDGE_SCORES,
    VERIFY_COLUMNS,
    ScoreStage,
    error_detail,
    iter_groups_safely,
    read_scores,
)
from ieiw.quality.scoring import STAGE as SCORE
from ieiw.quality.verifier import VERIFY_SCORES
from ieiw.storage import manifest
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.layout import BuildLayout, generator_name
from ieiw.storage.runner import worker_model
from ieiw.storage.schema import Drop, EncodedSample, Result, SampleMeta, stable_key
from ieiw.storage.stage import ModelSpec, ModelUse, Stage, model_key
from ieiw.storage.stage_folder import StageChanged, StageMissing, read_listing, read_record

if TYPE_CHECKING:
    from ieiw.quality.config import QualityConfig

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
            yield Drop(key=key, reason=CORRUPT_JSON, detail=error_detail(error))
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
            yield Drop(reason=CORRUPT_IMAGE, detail=error_detail(error), **base)


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


# ----------------------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class ShardToFilter:
    """One committed candidate shard with its rows of the scores table and its build-wide flags."""

    record_id: str  # the shard's name
    url: str
    scores: pd.DataFrame
    flags: pd.DataFrame | None


@dataclass(frozen=True)
class FilterInput:
    """What a filter run computes over: the committed candidate shards and the shards with committed
    scores, read once per run (``key`` names both)."""

    shards: list[str]
    scored: list[str]
    key: str


class FilterStage(Stage):
    """The policy over a generator's scored candidates: the final shards, the report, the flags.

    The input (:meth:`snapshot`) is read once per stage object, so the input key, the records and the
    report of a run agree: make one object per run, as the build does."""

    name = STAGE
    writes = "samples"
    whole_input = True

    def __init__(
        self,
        config: QualityConfig,
        candidates_url: str,
        scores_url: str,
        url: str,
        report_url: str,
        layout: BuildLayout,
    ) -> None:
        super().__init__(url, batch_size=1, shards=config.shard)
        self.name = f"{STAGE} {generator_name(candidates_url)}"
        self.config = config
        self.candidates_url = candidates_url
        self.scores_url = scores_url
        self.report_url = report_url
        self.score_stage = ScoreStage(config, candidates_url, scores_url, layout)
        self._input: FilterInput | None = None  # on the lead, read once per stage object
        self._scores: pd.DataFrame | None = None
        self._flags: pd.DataFrame | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_input=None, _scores=None, _flags=None)  # the lead's tables stay on the lead
        return state

    # ----------------------------------------------------------------------------- the contract

    unit = "candidate samples"

    def plan_inputs(self, upstream_samples: int | None) -> int | None:
        return upstream_samples

    def plan_done(self) -> int | None:
        """Candidates filtered (rows of the committed final manifest)."""
        return manifest.read_table(self.url, columns=["key"]).num_rows

    def model_uses(self) -> list[ModelUse]:
        return [ModelUse("policy", "declarative rules on the scores", "cpu")]

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        """The policy and the eval set (the section's fields of their roles), and the digests of the
        stages read. Raises :class:`StageChanged` when the score stage holds scores made with another
        scoring section than this config's."""
        return config_fingerprint(
            STAGE,
            self.config,
            env,
            upstream={"score": self.score_digest(env), "candidates": upstream_digest(self.candidates_url)},
            include=("policy", "eval_set"),
        )

    def score_digest(self, env: WorkerEnv) -> str:
        """The score stage's recorded digest, once it is known to be this config's (for workers of
        ``env``, or of the kind that made the scores)."""
        record = read_record(self.scores_url)
        if record is None:
            raise StageMissing(
                f"{self.scores_url} holds no scores: score the candidates first (ieiw score "
                f"{self.candidates_url}, or a build with its score stage)"
            )
        recorded = Fingerprint.from_record(record["fingerprint"])
        made_on = [WorkerEnv(**c["env"]) for c in record.get("complete", []) if c.get("env")]
        wanted = [self.score_stage.full_fingerprint(e) for e in dict.fromkeys([env, *made_on])]
        if any(w.digest == recorded.digest for w in wanted):
            return recorded.digest
        changes = wanted[0].changes(recorded) or ["(the fingerprint's digest differs)"]
        raise StageChanged(SCORE, self.scores_url, changes)

    def snapshot(self) -> FilterInput:
        """The committed candidate shards and the shards whose scores are committed, read once, so
        the input key, the records and the report of a run see the same input."""
        if self._input is None:
            shards = manifest.committed_shards(self.candidates_url)
            committed = manifest.completed_batches(self.scores_url)
            listing = read_listing(self.scores_url)
            batches, ids = listing.column("batch").to_pylist(), listing.column("record_id").to_pylist()
            scored = sorted({rid for batch, rid in zip(batches, ids, strict=True) if batch in committed})
            names = sorted(posixpath.basename(s) for s in shards)
            self._input = FilterInput(shards, scored, stable_key("filter-input", names, scored))
        return self._input

    def input_key(self) -> str | None:
        return self.snapshot().key

    def total(self) -> int | None:
        return len(self.snapshot().shards)

    def info(self) -> dict[str, Any]:
        return {
            "candidates_url": self.candidates_url,
            "scores_url": self.scores_url,
            "report_url": self.report_url,
        }

    def records(self) -> Iterator[ShardToFilter]:
        """Each committed candidate shard with its scores and flags (the flags computed here, once)."""
        snapshot = self.snapshot()
        scores = self.scores()
        recorded = (read_record(self.scores_url) or {}).get("fingerprint", {}).get("digest")
        if set(scores["fingerprint"].dropna()) - {recorded}:
            raise RuntimeError(
                f"{self.scores_url} holds scores of another fingerprint than its record: rebuild score"
            )
        check_scores_cover_policy(scores, self.config.policy)
        unscored = len(snapshot.shards) - len(set(scores["shard"]))
        if unscored > 0:
            log.warning("%s: %d committed candidate shards have no scores yet (dropped)", self.name, unscored)
        self._flags = self.flags(scores)
        by_shard = {name: group.reset_index(drop=True) for name, group in scores.groupby("shard")}
        for url in snapshot.shards:
            name = posixpath.basename(url)
            shard_scores = by_shard.get(name, scores.iloc[0:0])
            yield ShardToFilter(name, url, shard_scores, flags_for(self._flags, shard_scores["key"]))

    def run(self, records: list[ShardToFilter], models: Mapping[str, Any]) -> list[Result]:
        policy = self.config.policy
        return [
            r for record in records for r in filter_shard(record.url, record.scores, record.flags, policy)
        ]

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Keep the flags and write the report; returns what the flow publishes (the report's files and
        every candidate's outcome by task)."""
        if self._flags is not None:
            write_flags(writer, self._flags, self.input_key())
        report = write_report(
            self.candidates_url,
            self.scores(),
            self.url,
            self.report_url,
            self.config.policy,
            gallery_limit=self.config.report_images,
        )
        return {"report_url": self.report_url, "report": report["files"], "outcomes": report["counts"]}

    # ------------------------------------------------------------------------------ on the lead

    def scores(self) -> pd.DataFrame:
        """The committed scores of the run's input (read once)."""
        if self._scores is None:
            scored = set(self.snapshot().scored)
            frame = read_scores(self.scores_url, columns=SCORE_COLUMNS)
            self._scores = frame[frame["shard"].isin(scored)].reset_index(drop=True)
        return self._scores

    def flags(self, scores: pd.DataFrame) -> pd.DataFrame:
        """The build-wide flags of ``scores``: duplicates, eval-set leaks, missing embeddings."""
        duplicates = self.config.policy.duplicates
        eval_urls = self.config.eval_set
        embed_eval = bool(eval_urls) and duplicates.eval_clip_min_cosine is not None
        embedder = None
        if embed_eval:
            config = self.config.scoring.embedder
            spec = ModelSpec(
                model_key("clip", config), partial(ClipEmbedder.from_config, config), config.device
            )
            embedder = worker_model(spec)
        eval_set = eval_set_from_urls(eval_urls, embedder) if eval_urls else None
        cache = None
        if embed_eval or duplicates.clip_min_cosine is not None:
            cache = EmbeddingCache(self.score_stage.embeddings_url, self.embedding_namespace())
        return compute_flags(scores, self.config.policy, cache, eval_set)

    def embedding_namespace(self) -> str:
        """The embedding cache's namespace the scores were made with: the embedder's identity at the
        precision of the workers that made them (a CPU lead of GPU workers reads the GPUs' vectors)."""
        record = read_record(self.scores_url) or {}
        made_on = [WorkerEnv(**c["env"]) for c in record.get("complete", []) if c.get("env")]
        return self.config.scoring.embedder.identity(made_on[-1] if made_on else None)
