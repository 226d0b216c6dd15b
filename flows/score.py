"""The ``score`` flow: embed and score committed candidate shards into the scores stage.

Thin: it opens the scores stage folder with the stage's fingerprint (:func:`score_fingerprint`: the
scoring settings, the CLIP embedder, the aesthetic head and the GIQA reference index by content, the
judge model's identity with its rubrics' versions, the object detector by content, and the
candidates' digest), so a changed model or setting stops before any work with
:class:`~ieiw.storage.stage_folder.StageChanged` unless ``rebuild``; maps
:func:`ieiw.quality.scoring.run_score_shard` over the committed candidate shards whose batch is not
committed yet, with the models loaded once per worker process; records the run in the stage and
publishes what it found as artifacts (a table of counts and mean scores per task, and the score
histograms).
"""

from __future__ import annotations

import base64
import contextlib
import os
import threading
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from ieiw.flows.fingerprints import model_paths, section_fingerprint
from ieiw.flows.stage_runner import current_run_id, runner_device
from ieiw.flows.storage_errors import store_errors
from ieiw.quality.config import QualityConfig, cache_root, default_scores_url
from ieiw.quality.embeddings import EmbeddingCache
from ieiw.quality.identities import reference_index_identity
from ieiw.quality.judge import default_cache_url
from ieiw.quality.report import score_histograms
from ieiw.quality.scoring import (
    SCORES_SCHEMA,
    SCORES_VERSION,
    STAGE,
    ScoringConfig,
    ScoringModels,
    pending_shards,
    read_scores,
    run_score_shard,
    summary,
)
from ieiw.quality.stage_target import StageTarget
from ieiw.storage import manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import file_digest
from ieiw.storage.stage_folder import Rebuild, open_stage, recorded_fingerprint

_MODELS: dict[str, ScoringModels] = {}
_CACHES: dict[tuple[str, str, str | None], EmbeddingCache] = {}
_LOCK = threading.Lock()
UNRECORDED = "unrecorded"


def upstream_digest(stage_url: str) -> str:
    """The recorded fingerprint digest of a stage this one reads (``unrecorded`` for a folder written
    without a stage record, by an older version or by hand)."""
    recorded = recorded_fingerprint(stage_url)
    return recorded.digest if recorded is not None else UNRECORDED


def _checkpoint_identity(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} does not exist (a local file is expected)")
    return f"sha256:{file_digest(path)}"


def score_fingerprint(scoring: ScoringConfig, candidates_url: str) -> Fingerprint:
    """What determines the scores: the scoring settings (batch sizes, devices and cache locations left
    out), the models by content and the candidates' digest."""
    tree = scoring.model_dump(mode="json")
    for key in ("cache_url", "aesthetic_checkpoint", "judge", "verifier"):
        tree.pop(key)
    tree["embedder"].pop("model_config_file")
    if tree.get("giqa"):
        for key in ("index_dir", "inception_checkpoint", "use_gpu"):
            tree["giqa"].pop(key)
    base = section_fingerprint(
        STAGE,
        tree,
        upstream={"candidates": upstream_digest(candidates_url)},
        extra={"scores_version": SCORES_VERSION},
    )
    settings = dict(base.settings)
    if scoring.judge is not None:  # its rubrics' versions are among its settings
        settings["judge"] = scoring.judge.fingerprint_settings()
    if scoring.verifier is not None:
        settings["verifier"] = scoring.verifier.fingerprint_settings()
    identities = scoring.embedder.model_identities()  # also refuses a missing checkpoint up front
    giqa = scoring.giqa
    models = {
        **base.models,
        "embedder.model_config_file": identities["model_config_file"],
        "aesthetic_checkpoint": _checkpoint_identity(scoring.aesthetic_checkpoint, "aesthetic checkpoint")
        if scoring.aesthetic_checkpoint
        else None,
        "giqa.index": reference_index_identity(giqa.index_dir) if giqa else None,
        "giqa.inception_checkpoint": _checkpoint_identity(giqa.inception_checkpoint, "inception checkpoint")
        if giqa and giqa.inception_checkpoint
        else None,
        "judge.model": scoring.judge.identity() if scoring.judge else None,
        "verifier.model": scoring.verifier.identity() if scoring.verifier else None,
    }
    return Fingerprint(stage=STAGE, settings=settings, models=models, upstream=base.upstream)


def score_info(scoring: ScoringConfig, candidates_url: str, cache_url: str) -> dict:
    """Where things were on this machine: recorded for people, not fingerprinted."""
    paths = model_paths(scoring)
    if scoring.embedder.model_config_file:
        paths["embedder.model_config_file"] = scoring.embedder.model_config_file
    if scoring.aesthetic_checkpoint:
        paths["aesthetic_checkpoint"] = scoring.aesthetic_checkpoint
    if scoring.giqa is not None:
        paths["giqa.index_dir"] = scoring.giqa.index_dir
    if scoring.judge is not None:
        paths["judge.model"] = scoring.judge.model
        if scoring.judge.base_url:
            paths["judge.base_url"] = scoring.judge.base_url
    if scoring.verifier is not None:
        paths["verifier.model"] = scoring.verifier.model
    return {"models": paths, "candidates_url": candidates_url, "embedding_cache": cache_url}


def judge_cache_url(scoring: ScoringConfig, scores_url: str) -> str | None:
    """Where the judge's answers are cached: ``judge.cache_url``, or ``judge-cache/`` beside the scores
    (outside the stage folder, so a rebuild of the scores asks the judge nothing it answered before)."""
    if scoring.judge is None:
        return None
    return scoring.judge.cache_url or default_cache_url(scores_url)


def scoring_models(config: QualityConfig, identities: str = "") -> ScoringModels:
    """The scoring models of this worker process, loaded on first use; ``identities`` (the models'
    content identities) is part of the key, so a checkpoint replaced at the same path is reloaded."""
    key = config.scoring.model_dump_json() + identities
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = ScoringModels.load(config.scoring)
        return _MODELS[key]


def run_cache(cache_url: str, namespace: str, holder: str | None) -> EmbeddingCache:
    """The embedding cache of one run in this process (a new run, maybe after a rebuild wiped the
    cache, never trusts an index read by an earlier one)."""
    with _LOCK:
        for stale in [k for k in _CACHES if k[2] != holder]:
            del _CACHES[stale]
        return _CACHES.setdefault((cache_url, namespace, holder), EmbeddingCache(cache_url, namespace))


@dataclass(frozen=True)
class ScoreJob:
    """What a score task needs: the stage it commits to, the config, the models' identities, the cache."""

    target: StageTarget
    config_json: str
    identities: str
    cache_url: str
    namespace: str
    judge_cache_url: str | None = None


@task(name="score-shard", cache_policy=NONE)
def score_shard_task(shard_url: str, job: ScoreJob) -> dict:
    config = QualityConfig.model_validate_json(job.config_json)
    models = scoring_models(config, job.identities)
    cache = run_cache(job.cache_url, job.namespace, job.target.holder)
    with store_errors(f"score batch of {shard_url}", job.target.url):
        return run_score_shard(
            shard_url, job.target, models, cache, config.scoring.batch_size, job.judge_cache_url
        )


def candidate_shards(candidates_url: str) -> list[str]:
    """The committed shards of the candidate stage (never a folder listing)."""
    return manifest.committed_shards(candidates_url)


@flow(name="score")
def score_flow(
    candidates_url: str,
    scores_url: str | None = None,
    config: dict | None = None,
    shards_per_wave: int = 8,
    rebuild: Rebuild = "no",
) -> dict:
    """Score every committed candidate shard of ``candidates_url`` whose score batch is not committed."""
    logger = get_run_logger()
    quality = QualityConfig.model_validate(config or {})
    scores_url = scores_url or default_scores_url(candidates_url)
    cache_url = cache_root(quality, scores_url)
    fingerprint = score_fingerprint(quality.scoring, candidates_url)
    with contextlib.ExitStack() as held:
        with store_errors(f"stage {STAGE}", scores_url):
            writer = held.enter_context(
                open_stage(
                    scores_url,
                    fingerprint,
                    rebuild=rebuild,
                    run=current_run_id(),
                    info=score_info(quality.scoring, candidates_url, cache_url),
                )
            )
        if writer.rebuilt:
            logger.warning("score: rebuilding (%s)", "; ".join(writer.changes) or "asked to")
        if any(writer.cleaned.values()):
            logger.warning("score: removed what interrupted runs left: %s", writer.cleaned)
        namespace = quality.scoring.embedder.identity()
        if not quality.scoring.cache_url:  # the cache is the stage's own: its holder cleans it
            removed = EmbeddingCache(cache_url, namespace).remove_orphans()
            if removed:
                logger.warning("score: removed %d unreferenced embedding files", removed)
        shards = candidate_shards(candidates_url)
        pending = pending_shards(shards, writer.committed_batches())
        logger.info("%d committed candidate shards, %d to score", len(shards), len(pending))
        job = ScoreJob(
            StageTarget.of(writer),
            quality.model_dump_json(),
            repr(sorted(fingerprint.models.items())),
            cache_url,
            namespace,
            judge_cache_url(quality.scoring, scores_url),
        )
        results = []
        for start in range(0, len(pending), shards_per_wave):
            wave = pending[start : start + shards_per_wave]
            futures = score_shard_task.map(wave, job=job)
            results += [f.result() for f in futures]
        with store_errors(f"stage {STAGE}", scores_url):
            writer.finish(
                {
                    "batches": len(shards),
                    "scored": len(results),
                    "samples": sum(r["samples"] for r in results),
                    "judge_errors": sum(r.get("judge_errors", 0) for r in results),
                    "compute_seconds": round(sum(r["seconds"] for r in results), 3),
                    "device": runner_device(),
                },
                schema=SCORES_SCHEMA,
            )
        scores = read_scores(scores_url)
    totals = summary(scores)
    publish_score_artifacts(totals, scores)
    return {
        "scores_url": scores_url,
        "shards": len(shards),
        "scored_now": len(results),
        "fingerprint": writer.digest,
        "rebuilt": writer.rebuilt,
        **totals,
    }


def publish_score_artifacts(totals: dict, scores) -> None:
    rows = [{"task": task_name, **means} for task_name, means in totals["mean_by_task"].items()]
    create_table_artifact(
        rows or [{"task": "none"}],
        key="quality-score-means",
        description=f"{totals['samples']} scored samples, errors {totals['errors']}",
    )
    histograms = score_histograms(scores[scores["error"].isna()], scores.iloc[0:0])
    if histograms:
        create_markdown_artifact(
            markdown_images(histograms),
            key="quality-score-histograms",
            description="score histograms per task (before filtering)",
        )


def markdown_images(pngs: dict[str, bytes]) -> str:
    """Markdown with the PNGs inlined, for the Prefect UI."""
    return "\n\n".join(
        f"### {name}\n\n![{name}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
        for name, png in pngs.items()
    )
