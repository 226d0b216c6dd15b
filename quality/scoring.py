"""The score stage: embed and score the samples of candidate shards into a Parquet scores table.

The scores table is a stage folder (:mod:`ieiw.storage.stage_folder`, default
``<candidates>/quality/scores``): one batch per committed candidate shard, named
``score-<shard name>`` (fixed by the shard, whatever finished first), whose manifest part *is* the
shard's scores and commits them. A rerun skips committed batches; the stage's fingerprint (scoring
settings, the models by content, the candidates' digest) is checked when it is opened, so parts
made with another model or from other candidates are never mixed with new ones. Readers
(:func:`read_scores`) see committed parts only. Within a shard, samples are decoded and scored
``batch_size`` at a time, so memory does not grow with shard size. CLIP image embeddings go through
an :class:`~quality.embeddings.EmbeddingCache` kept under the embedder's identity by content and
keyed by the digest of the encoded image, so an image shared by many pairs (one photo, many removed
objects) or seen by an earlier run is embedded once.

Scores per sample (NaN when the model for it is not configured):

``aesthetic_src``, ``aesthetic_tgt``, ``aesthetic_diff`` (absolute difference), ``giqa_src``,
``giqa_tgt``, ``giqa_diff``, ``clip_direction`` (captions' direction if the sample's ``extra`` has
``source_caption``/``target_caption``, else the instruction's), ``clip_img_sim``, plus the perceptual
hashes ``phash_src``/``phash_tgt`` and the image digests used as cache keys.

With ``scoring.judge`` (:mod:`ieiw.quality.judge`), the judge's scores ``judge_compliance``,
``judge_preservation``, ``judge_realism``, ``judge_overall`` (0 to 10), its reasons
(``judge_reasons``, JSON), its own wording of the instruction (``judge_instruction``, with
``rewrite_instruction``), its model and rubric identities, or ``judge_error`` (a drop reason) when
it gave no usable answer. With ``scoring.verifier`` (:mod:`ieiw.quality.verifier`), the object
checks ``verify_removed_src``, ``verify_removed_tgt``, ``verify_added_src``, ``verify_added_tgt``,
the queries asked (``verify_queries``) or ``verify_error``. Both are asked once per scoring batch,
for all its pairs at once.

A sample whose json or image cannot be decoded gets a row with ``error`` set
(``corrupt_json``, ``corrupt_image``, ``missing_image``); the filter turns it into a counted drop.
"""

from __future__ import annotations

import json
import logging
import posixpath
import tarfile
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from ieiw.quality import similarity
from ieiw.quality.aesthetic import AestheticPredictor, load_aesthetic_predictor
from ieiw.quality.duplicates import phash
from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig, EmbeddingCache, embed_images_cached
from ieiw.quality.giqa import GiqaConfig, KnnGiqa
from ieiw.quality.judge import (
    JUDGE_COLUMNS,
    JUDGE_SCORES,
    Judge,
    JudgeConfig,
    PendingJudgements,
)
from ieiw.quality.scoring_inputs import (
    DecodedPair,
    decode_pair,
    judge_requests,
    pair_captions,
    verification_columns,
    verify_pairs,
)
from ieiw.quality.stage_target import StageTarget
from ieiw.quality.verifier import VERIFY_SCORES, ObjectVerifier, VerifierConfig
from ieiw.storage import manifest
from ieiw.storage.config import model_ref, operational, output
from ieiw.storage.shards import iter_tar_groups
from ieiw.storage.stage_folder import commit_files

log = logging.getLogger(__name__)

STAGE = "score"
SCORES_VERSION = 3  # of the scores table's columns and their meaning: part of the stage's fingerprint
FLOAT_SCORES = (
    "aesthetic_src",
    "aesthetic_tgt",
    "aesthetic_diff",
    "giqa_src",
    "giqa_tgt",
    "giqa_diff",
    "clip_direction",
    "clip_img_sim",
    *VERIFY_SCORES,
    *JUDGE_SCORES,
)
# beside their scores, the judge's and the verifier's words (strings; null when not asked)
VERIFY_COLUMNS = ("verify_error", "verify_queries")
# scoring batches whose judgements may still be in flight while the next ones are scored: the judge's
# requests flow across batches (its pool never drains at a batch's end); memory holds their encoded images
JUDGE_BACKLOG = 4
SCORES_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("record_id", pa.string()),
        ("task", pa.string()),
        ("shard", pa.string()),
        ("error", pa.string()),
        ("error_detail", pa.string()),
        *[(name, pa.float32()) for name in FLOAT_SCORES],
        ("phash_src", pa.uint64()),
        ("phash_tgt", pa.uint64()),
        ("digest_src", pa.string()),
        ("digest_tgt", pa.string()),
        *[(name, pa.string()) for name in JUDGE_COLUMNS + VERIFY_COLUMNS],
        ("fingerprint", pa.string()),  # the score stage's digest, set when the part is committed
    ]
)


class ScoringConfig(BaseModel):
    """Which models score, where embeddings are cached, and how many samples are decoded at once."""

    model_config = ConfigDict(extra="forbid")

    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    aesthetic_checkpoint: str | None = model_ref(None)
    giqa: GiqaConfig | None = None
    cache_url: str | None = output(None)  # default: the build's embedding cache
    batch_size: int = operational(64)
    judge: JudgeConfig | None = None  # a VLM judge's scores and reasons (quality.judge)
    verifier: VerifierConfig | None = None  # open-vocabulary object checks (quality.verifier)


@dataclass
class ScoringModels:
    """The models of the score stage, loaded once per worker process."""

    embedder: ClipEmbedder
    aesthetic: AestheticPredictor | None = None
    giqa: KnnGiqa | None = None
    giqa_features: object | None = None  # InceptionFeatures when the index holds inception features
    judge: Judge | None = None  # without a cache: callers give theirs (Judge.with_cache)
    verifier: ObjectVerifier | None = None

    @classmethod
    def load(cls, config: ScoringConfig) -> ScoringModels:
        embedder = ClipEmbedder.from_config(config.embedder)
        aesthetic = None
        if config.aesthetic_checkpoint:
            aesthetic = load_aesthetic_predictor(config.aesthetic_checkpoint, embedder.device)
            if aesthetic.input_dim != embedder.dim:
                raise ValueError(
                    f"the aesthetic head takes {aesthetic.input_dim}-d embeddings but "
                    f"{config.embedder.model} gives {embedder.dim}-d; "
                    "use the CLIP model it was trained on (ViT-L/14)"
                )
        giqa = features = None
        if config.giqa is not None:
            giqa = KnnGiqa.from_config(config.giqa)
            if giqa.features == "inception":
                from ieiw.quality.inception import InceptionFeatures

                if not config.giqa.inception_checkpoint:
                    raise ValueError("the GIQA index holds inception features: set giqa.inception_checkpoint")
                features = InceptionFeatures.from_checkpoint(config.giqa.inception_checkpoint)
            elif giqa.reference.meta.dim != embedder.dim:
                raise ValueError(
                    f"the GIQA index holds {giqa.reference.meta.dim}-d features, "
                    f"the embedder gives {embedder.dim}-d"
                )
        judge = Judge.from_config(config.judge) if config.judge is not None else None
        verifier = ObjectVerifier.from_config(config.verifier) if config.verifier is not None else None
        return cls(embedder, aesthetic, giqa, features, judge, verifier)


def shard_name(shard_url: str) -> str:
    return posixpath.basename(str(shard_url))[: -len(".tar")]


def score_batch_name(shard_url: str) -> str:
    """The score stage's batch of one candidate shard: fixed by the shard's name."""
    return f"{STAGE}-{shard_name(shard_url)}"


def score_batch(
    decoded: list[DecodedPair],
    models: ScoringModels,
    cache: EmbeddingCache | None,
    shard: str,
    judge: Judge | None = None,
) -> list[dict]:
    """Score rows of decoded samples (one embedding call for all their images; one judge and one
    verifier call for all their pairs). ``judge`` (default ``models.judge``) carries its answer cache."""
    rows, judging = _score_batch(decoded, models, cache, shard, judge or models.judge)
    return _judged(rows, judging)


def _judged(rows: list[dict], judging: PendingJudgements | None) -> list[dict]:
    """``rows`` with the judge's columns, once its judgements are in."""
    if judging is not None:
        for row, judgement in zip(rows, judging.result(), strict=True):
            row.update(judgement.columns())
    return rows


def _score_batch(
    decoded: list[DecodedPair],
    models: ScoringModels,
    cache: EmbeddingCache | None,
    shard: str,
    judge: Judge | None,
) -> tuple[list[dict], PendingJudgements | None]:
    """The rows of a batch without the judge's columns, and the judgements on their way (sent first,
    so they are in flight while the batch is embedded and scored)."""
    if not decoded:
        return [], None
    judging = judge.submit(judge_requests(decoded)) if judge is not None else None
    images = {d.digest_src: d.source for d in decoded} | {d.digest_tgt: d.target for d in decoded}
    keys = list(images)
    vectors = embed_images_cached(models.embedder, cache, keys, lambda ks: [images[k] for k in ks])
    by_digest = dict(zip(keys, vectors, strict=True))
    src = np.stack([by_digest[d.digest_src] for d in decoded])
    tgt = np.stack([by_digest[d.digest_tgt] for d in decoded])
    n = len(decoded)
    scores: dict[str, np.ndarray] = {name: np.full(n, np.nan, np.float32) for name in FLOAT_SCORES}
    scores["clip_img_sim"] = similarity.image_similarity(src, tgt)
    scores["clip_direction"] = _directions(decoded, src, tgt, models.embedder)
    if models.aesthetic is not None:
        scores["aesthetic_src"] = models.aesthetic.score(src)
        scores["aesthetic_tgt"] = models.aesthetic.score(tgt)
        scores["aesthetic_diff"] = np.abs(scores["aesthetic_src"] - scores["aesthetic_tgt"])
    if models.giqa is not None:
        if models.giqa_features is not None:
            feats = models.giqa_features.embed_images(
                [d.source for d in decoded] + [d.target for d in decoded]
            )
            g_src, g_tgt = feats[:n], feats[n:]
        else:
            g_src, g_tgt = src, tgt
        scores["giqa_src"] = models.giqa.score(g_src)
        scores["giqa_tgt"] = models.giqa.score(g_tgt)
        scores["giqa_diff"] = np.abs(scores["giqa_src"] - scores["giqa_tgt"])
    verified = verify_pairs(decoded, models.verifier) if models.verifier is not None else None
    rows = []
    for i, d in enumerate(decoded):
        row = {
            "key": d.key,
            "record_id": d.meta.record_id,
            "task": str(d.meta.task),
            "shard": shard,
            "error": None,
            "error_detail": None,
            "phash_src": phash(d.source),
            "phash_tgt": phash(d.target),
            "digest_src": d.digest_src,
            "digest_tgt": d.digest_tgt,
        }
        row.update({name: float(scores[name][i]) for name in FLOAT_SCORES})
        if verified is not None:
            row.update(verification_columns(verified[i]))
        rows.append(row)
    return rows, judging


def _directions(
    decoded: list[DecodedPair], src: np.ndarray, tgt: np.ndarray, embedder: ClipEmbedder
) -> np.ndarray:
    captions = [pair_captions(d.meta) for d in decoded]
    out = np.empty(len(decoded), np.float32)
    with_captions = [i for i, c in enumerate(captions) if c is not None]
    without = [i for i, c in enumerate(captions) if c is None]
    if with_captions:
        texts = embedder.embed_texts(
            [captions[i][0] for i in with_captions] + [captions[i][1] for i in with_captions]
        )
        m = len(with_captions)
        out[with_captions] = similarity.directional_similarity(
            src[with_captions], tgt[with_captions], texts[:m], texts[m:]
        )
    if without:
        texts = embedder.embed_texts([decoded[i].meta.instruction for i in without])
        out[without] = similarity.instruction_alignment(src[without], tgt[without], texts)
    return out


def iter_groups_safely(shard_url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The shard's tar groups; a truncated or corrupt tar ends the shard with a logged error."""
    try:
        yield from iter_tar_groups(shard_url)
    except (tarfile.TarError, EOFError, OSError) as error:
        log.error("shard %s is unreadable after the samples read so far: %s", shard_url, error)


def score_shard(
    shard_url: str,
    models: ScoringModels,
    cache: EmbeddingCache | None,
    batch_size: int = 64,
    judge_cache_url: str | None = None,
) -> list[dict]:
    """Score rows of every sample in one candidate shard, streaming ``batch_size`` samples at a time
    (the judge answers through the cache at ``judge_cache_url``)."""
    shard = posixpath.basename(str(shard_url))
    judge = models.judge.with_cache(judge_cache_url) if models.judge is not None else None
    rows: list[dict] = []
    pending: list[DecodedPair] = []
    waiting: deque[tuple[list[dict], PendingJudgements | None]] = deque()  # batches the judge still has

    def scored(batch: list[DecodedPair]) -> None:
        waiting.append(_score_batch(batch, models, cache, shard, judge))
        while len(waiting) > JUDGE_BACKLOG:
            rows.extend(_judged(*waiting.popleft()))

    for key, members in iter_groups_safely(shard_url):
        decoded = decode_pair(key, members, shard)
        if isinstance(decoded, dict):
            log.warning("sample %s in %s: %s", key, shard, decoded["error"])
            rows.append(decoded)
            continue
        pending.append(decoded)
        if len(pending) >= batch_size:
            scored(pending)
            pending = []
    scored(pending)
    while waiting:
        rows.extend(_judged(*waiting.popleft()))
    return rows


def commit_scores(target: StageTarget, shard_url: str, rows: list[dict]) -> str:
    """Commit one candidate shard's scores as the score stage's batch (if ``target`` still holds the
    stage's lease); returns the part's URL."""
    table = pa.Table.from_pylist(rows, schema=SCORES_SCHEMA)
    return commit_files(
        target.url, score_batch_name(shard_url), table, None, target.digest, target.holder, target.stage
    )


def run_score_shard(
    shard_url: str,
    target: StageTarget,
    models: ScoringModels,
    cache: EmbeddingCache | None,
    batch_size: int = 64,
    judge_cache_url: str | None = None,
) -> dict:
    """Score one candidate shard and commit its batch; returns a small summary for logs and the record."""
    started = time.perf_counter()
    rows = score_shard(shard_url, models, cache, batch_size, judge_cache_url)
    commit_scores(target, shard_url, rows)
    return {
        "shard": shard_name(shard_url),
        "batch": score_batch_name(shard_url),
        "skipped": False,
        "samples": len(rows),
        "errors": sum(1 for r in rows if r.get("error")),
        "judge_errors": sum(1 for r in rows if r.get("judge_error")),
        "seconds": round(time.perf_counter() - started, 3),
    }


def pending_shards(shard_urls: Iterable[str], committed: set[str]) -> list[str]:
    """The candidate shards whose score batch is not committed yet, in order."""
    return [s for s in shard_urls if score_batch_name(s) not in committed]


def score_shards(
    target: StageTarget,
    shard_urls: list[str],
    models: ScoringModels,
    cache: EmbeddingCache | None,
    batch_size: int = 64,
    judge_cache_url: str | None = None,
) -> list[dict]:
    """Score every shard of ``shard_urls`` not committed yet, in this process (the ``score`` flow maps
    :func:`run_score_shard` over workers instead)."""
    committed = manifest.completed_batches(target.url)
    done = [
        {"shard": shard_name(s), "batch": score_batch_name(s), "skipped": True, "samples": 0, "errors": 0}
        for s in shard_urls
        if score_batch_name(s) in committed
    ]
    return done + [
        run_score_shard(s, target, models, cache, batch_size, judge_cache_url)
        for s in pending_shards(shard_urls, committed)
    ]


def read_scores(
    scores_url: str, shard_url: str | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """The committed rows of the scores table (all, or one candidate shard's) as a DataFrame."""
    wanted = columns if columns is None or shard_url is None or "shard" in columns else [*columns, "shard"]
    table = manifest.read_table(scores_url, wanted, schema=SCORES_SCHEMA)
    frame = table.to_pandas()
    if shard_url is not None:
        frame = frame[frame["shard"] == posixpath.basename(str(shard_url))].reset_index(drop=True)
        if columns is not None:
            frame = frame[columns]
    return frame


def summary(scores: pd.DataFrame) -> dict:
    """Counts and score means per task, for artifacts."""
    out = {"samples": int(len(scores)), "errors": json.loads(scores["error"].value_counts().to_json())}
    if "judge_error" in scores and scores["judge_error"].notna().any():
        out["judge_errors"] = json.loads(scores["judge_error"].value_counts().to_json())
    ok = scores[scores["error"].isna()]
    present = [c for c in FLOAT_SCORES if ok[c].notna().any()]
    out["mean_by_task"] = json.loads(ok.groupby("task")[present].mean().round(4).to_json(orient="index"))
    return out
