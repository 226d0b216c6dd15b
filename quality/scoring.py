"""The score stage: embed and score the samples of candidate shards into a Parquet scores table.

:class:`ScoreStage` is a ``rows`` stage of the one stage contract (:mod:`ieiw.storage.stage`): its
input is the candidate stage's committed shards, one shard per batch; a batch's manifest part *is* the
shard's scores and commits them. A rerun skips committed batches; the stage's fingerprint (the scoring
section read by its fields' roles: settings, the models by identity, the precision the workers compute
in; and the candidates' recorded digest) is checked when it is opened, so parts made with another model
or from other candidates are never mixed with new ones. Readers (:func:`read_scores`) see committed
parts only. Within a shard, samples are decoded and scored ``batch_size`` at a time, so memory does not
grow with shard size. CLIP image embeddings go through an
:class:`~ieiw.quality.embeddings.EmbeddingCache` kept under the embedder's identity by content and keyed
by the digest of the encoded image, so an image shared by many pairs (one photo, many removed objects)
or seen by an earlier run is embedded once. The cache and the judge's answers live beside the stages in
the build's layout (:class:`~ieiw.storage.layout.BuildLayout`), never inside one: ``--rebuild score``
keeps them.

Every model call runs at one fixed batch shape (:mod:`ieiw.quality.fixed_batches`), so a sample's scores
never depend on which samples shared its call: a resumed run, another worker or a warmer cache gives
the same bytes as one uninterrupted run.

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
for all its pairs at once; the judge's requests flow on while the next batches are scored.

A sample whose json or image cannot be decoded gets a row with ``error`` set
(``corrupt_json``, ``corrupt_image``, ``missing_image``); the filter turns it into a counted drop.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import re
import tarfile
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ieiw.quality import similarity
from ieiw.quality.aesthetic import AestheticPredictor, load_aesthetic_predictor
from ieiw.quality.duplicates import phash
from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig, EmbeddingCache, embed_images_cached
from ieiw.quality.giqa import GiqaConfig, KnnGiqa
from ieiw.quality.identities import upstream_digest
from ieiw.quality.judge import (
    JUDGE_COLUMNS,
    JUDGE_SCORES,
    Judge,
    JudgeConfig,
    JudgeRequest,
    PendingJudgements,
)
from ieiw.quality.verifier import VERIFY_SCORES, ObjectVerifier, Verification, VerifierConfig, VerifyItem
from ieiw.storage import manifest
from ieiw.storage.answer_cache import PromptCache
from ieiw.storage.config import (
    WorkerEnv,
    config_fingerprint,
    model_ref,
    model_references,
    operational,
    output,
)
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.images import decode_image
from ieiw.storage.layout import BuildLayout, generator_name
from ieiw.storage.schema import SampleMeta, stable_key
from ieiw.storage.shards import iter_tar_groups
from ieiw.storage.stage import HOST, ModelSpec, ModelUse, Rows, Stage, Work, gpu_tags, model_key

if TYPE_CHECKING:
    from ieiw.quality.config import QualityConfig

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
    batch_size: int = operational(64)  # samples decoded and scored at a time (memory, not results)
    judge: JudgeConfig | None = None  # a VLM judge's scores and reasons (quality.judge)
    verifier: VerifierConfig | None = None  # open-vocabulary object checks (quality.verifier)


@dataclass
class ScoringModels:
    """The models of the score stage, loaded once per worker process."""

    embedder: ClipEmbedder
    aesthetic: AestheticPredictor | None = None
    giqa: KnnGiqa | None = None
    giqa_features: object | None = None  # InceptionFeatures when the index holds inception features
    judge: Judge | None = None  # without an answer cache: the stage gives it the build's
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


# ------------------------------------------------------------------------------------------- inputs


def error_detail(error: BaseException, limit: int = 300) -> str:
    """An error's message as a table keeps it: without the memory addresses some messages name
    (``<_io.BytesIO object at 0x7f..>``), so the same input gives the same bytes on every run."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))[:limit]


def digest(data: bytes) -> str:
    """Content key of an encoded image: the embedding cache key."""
    return hashlib.sha256(data).hexdigest()[:24]


@dataclass
class DecodedPair:
    key: str
    meta: SampleMeta
    source: np.ndarray
    target: np.ndarray
    digest_src: str
    digest_tgt: str
    src_bytes: bytes
    tgt_bytes: bytes
    mask_bytes: bytes | None


def member(members: dict[str, bytes], stem: str) -> bytes | None:
    for name, data in members.items():
        if name.split(".", 1)[0] == stem:
            return data
    return None


def decode_pair(key: str, members: dict[str, bytes], shard: str) -> DecodedPair | dict:
    """The decoded sample, or an error row."""
    row = {"key": key, "shard": shard}
    try:
        meta = SampleMeta.model_validate_json(members["json"])
    except (KeyError, ValidationError, ValueError) as error:
        return {**row, "error": "corrupt_json", "error_detail": error_detail(error)}
    row.update(record_id=meta.record_id, task=str(meta.task))
    src, tgt = member(members, "src"), member(members, "tgt")
    if src is None or tgt is None:
        return {**row, "error": "missing_image", "error_detail": f"members: {sorted(members)}"}
    try:
        source, target = decode_image(src), decode_image(tgt)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return {**row, "error": "corrupt_image", "error_detail": error_detail(error)}
    return DecodedPair(key, meta, source, target, digest(src), digest(tgt), src, tgt, member(members, "mask"))


def pair_captions(meta: SampleMeta) -> tuple[str, str] | None:
    extra = meta.extra
    src, tgt = extra.get("source_caption"), extra.get("target_caption")
    captions = extra.get("captions")
    if isinstance(captions, dict):
        src, tgt = src or captions.get("source"), tgt or captions.get("target")
    return (src, tgt) if isinstance(src, str) and isinstance(tgt, str) and src and tgt else None


def judge_requests(decoded: list[DecodedPair]) -> list[JudgeRequest]:
    return [
        JudgeRequest(d.key, str(d.meta.task), d.meta.instruction, d.src_bytes, d.tgt_bytes) for d in decoded
    ]


def verify_pairs(decoded: list[DecodedPair], verifier: ObjectVerifier) -> list[Verification]:
    items = []
    for d in decoded:
        mask = None
        if d.mask_bytes is not None:
            try:
                mask = decode_mask(d.mask_bytes)
            except (UnidentifiedImageError, OSError, ValueError):
                mask = None  # an unreadable mask: the pair cannot be checked (verify_no_mask)
        items.append(VerifyItem(d.key, str(d.meta.task), d.meta.extra, d.source, d.target, mask))
    return verifier.verify(items)


def verification_columns(verification: Verification) -> dict:
    return {
        **{name: float(verification.scores[name]) for name in VERIFY_SCORES},
        "verify_error": verification.error,
        "verify_queries": json.dumps(verification.queries, sort_keys=True) if verification.queries else None,
    }


def decode_mask(data: bytes) -> np.ndarray:
    """A mask member as HxW ``uint8`` (nonzero inside)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"))


# ------------------------------------------------------------------------------------------ scoring


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
    judge: Judge | None = None,
) -> list[dict]:
    """Score rows of every sample in one candidate shard, streaming ``batch_size`` samples at a time;
    ``judge`` (default ``models.judge``) carries its answer cache. The judge's requests of up to
    :data:`JUDGE_BACKLOG` scoring batches are in flight while the next batches are scored."""
    shard = posixpath.basename(str(shard_url))
    judge = judge or models.judge
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


# ----------------------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class CandidateShard:
    """One committed candidate shard: the score stage's unit of work (its record id is the shard's name)."""

    record_id: str
    url: str


class ScoreStage(Stage):
    """Score a generator's committed candidate shards, one shard per batch, into the scores table.

    The committed shards are read once per stage object (the input key and the records of a run agree):
    make one object per run, as the build does."""

    name = STAGE
    writes = "rows"
    schema = SCORES_SCHEMA

    def __init__(self, config: QualityConfig, candidates_url: str, url: str, layout: BuildLayout) -> None:
        scoring = config.scoring
        super().__init__(url, batch_size=1, tags=gpu_tags(True, scoring.embedder.device))
        self.name = f"{STAGE} {generator_name(candidates_url)}"
        self.scoring = scoring
        self.candidates_url = candidates_url
        self.embeddings_url = scoring.cache_url or layout.embeddings
        judge = scoring.judge
        self.judge_answers_url = (judge.cache_url or layout.judge_answers) if judge is not None else None
        self._shards: list[str] | None = None  # the committed candidate shards, read once per run
        self._identities: str | None = None  # the models' identities, once the fingerprint knows them

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = None  # the lead's listing stays on the lead
        return state

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        fingerprint = config_fingerprint(
            STAGE,
            self.scoring,
            env,
            upstream={"candidates": upstream_digest(self.candidates_url)},
            extra={"scores_version": SCORES_VERSION},
        )
        self._identities = stable_key(dict(fingerprint.models))
        return fingerprint

    def candidate_shards(self) -> list[str]:
        """The candidate stage's committed shards (never a folder listing), read once per stage object."""
        if self._shards is None:
            self._shards = manifest.committed_shards(self.candidates_url)
        return self._shards

    def records(self) -> Iterator[CandidateShard]:
        for url in self.candidate_shards():
            yield CandidateShard(posixpath.basename(url), url)

    def input_key(self) -> str | None:
        """The committed candidate shards, by name (their content is in the candidates' digest)."""
        return stable_key("score-input", sorted(posixpath.basename(u) for u in self.candidate_shards()))

    def total(self) -> int | None:
        return len(self.candidate_shards())

    unit = "candidate samples"

    def plan_inputs(self, upstream_samples: int | None) -> int | None:
        """The candidates' samples (what the plan estimates from), not the shards the batches are."""
        return upstream_samples

    def plan_done(self) -> int | None:
        """Samples scored (rows of the committed scores table)."""
        return manifest.read_table(self.url, columns=["key"], schema=SCORES_SCHEMA).num_rows
    def model_uses(self) -> list[ModelUse]:
        scoring = self.scoring
        embedder = scoring.embedder
        uses = [ModelUse("embedder", f"open_clip {embedder.model} ({embedder.pretrained})", embedder.device)]
        if scoring.aesthetic_checkpoint:
            name = posixpath.basename(scoring.aesthetic_checkpoint.split("#")[0])
            uses.append(ModelUse("aesthetic", f"LAION aesthetic MLP {name}", embedder.device))
        if scoring.giqa is not None:
            from ieiw.quality.faiss_search import faiss_device

            index = posixpath.basename(scoring.giqa.index_dir.rstrip("/"))
            uses.append(ModelUse("giqa", f"KNN-GIQA index {index}", faiss_device()))
        if scoring.judge is not None:
            judge = scoring.judge
            where = (
                f"remote: {judge.base_url or 'api.openai.com'}" if judge.backend == "openai" else judge.device
            )
            uses.append(ModelUse("judge", f"{judge.backend} {judge.model}", where))
        if scoring.verifier is not None:
            uses.append(ModelUse("verifier", scoring.verifier.model, scoring.verifier.device))
        return uses

    def workload(self, inputs: int | None) -> list[Work]:
        """CLIP on every distinct image: a removal sample and its reversed add pair share their two
        images (the embedding cache embeds each once), other generators' samples have two of their own."""
        if inputs is None:
            return [Work("clip_images", None)]
        images = inputs if generator_name(self.candidates_url) == "removal" else 2 * inputs
        return [Work("clip_images", images)]

    def info(self) -> dict[str, Any]:
        return {
            "models": model_references(self.scoring),
            "candidates_url": self.candidates_url,
            "embedding_cache": self.embeddings_url,
            **({"judge_answers": self.judge_answers_url} if self.judge_answers_url else {}),
        }

    def models(self) -> Mapping[str, ModelSpec]:
        """The scoring models (one spec: they are loaded together and share the embedder's device), the
        embedding cache and the judge's answer cache (objects of the worker's memory)."""
        scoring = self.scoring
        identities = self._identities or stable_key(
            dict(config_fingerprint(STAGE, scoring, WorkerEnv()).models)
        )
        namespace = scoring.embedder.identity()
        specs = {
            "scoring": ModelSpec(
                model_key("scoring", scoring, identities),
                partial(ScoringModels.load, scoring),
                scoring.embedder.device,
            ),
            "embeddings": ModelSpec(
                f"embedding-cache:{self.embeddings_url}:{namespace}",
                partial(EmbeddingCache, self.embeddings_url, namespace),
                HOST,
            ),
        }
        if self.judge_answers_url is not None:
            specs["judge_answers"] = ModelSpec(
                f"judge-answers:{self.judge_answers_url}", partial(PromptCache, self.judge_answers_url), HOST
            )
        return specs

    def run(self, records: list[CandidateShard], models: Mapping[str, Any]) -> Rows:
        scoring: ScoringModels = models["scoring"]
        judge = None
        if scoring.judge is not None:
            judge = Judge(scoring.judge.config, scoring.judge.backend, models.get("judge_answers"))
        rows: list[dict] = []
        for shard in records:
            rows += score_shard(shard.url, scoring, models["embeddings"], self.scoring.batch_size, judge)
        counts: Counter = Counter(r["error"] for r in rows if r.get("error"))
        counts.update(r["judge_error"] for r in rows if r.get("judge_error"))
        return Rows(pa.Table.from_pylist(rows, schema=SCORES_SCHEMA), counts=dict(counts))

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Counts and score means per task of the whole table (what the flow shows)."""
        return score_summary(read_scores(self.url))


# ------------------------------------------------------------------------------------------ reading


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


def score_summary(scores: pd.DataFrame) -> dict:
    """Counts and score means per task, for artifacts."""
    out = {"samples": int(len(scores)), "errors": json.loads(scores["error"].value_counts().to_json())}
    if "judge_error" in scores and scores["judge_error"].notna().any():
        out["judge_errors"] = json.loads(scores["judge_error"].value_counts().to_json())
    ok = scores[scores["error"].isna()]
    present = [c for c in FLOAT_SCORES if ok[c].notna().any()]
    out["mean_by_task"] = json.loads(ok.groupby("task")[present].mean().round(4).to_json(orient="index"))
    return out
