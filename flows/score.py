"""The ``score`` flow: embed and score candidate shards into the scores table (resumable per shard).

Thin: it maps :func:`ieiw.quality.scoring.run_score_shard` over the shards that have no scores part
yet, with the models loaded once per worker process, and publishes what it found as artifacts
(a table of counts and mean scores per task, and the score histograms).
"""

from __future__ import annotations

import base64
import threading

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from ieiw.quality.config import QualityConfig, default_scores_url, embedding_cache
from ieiw.quality.embeddings import EmbeddingCache
from ieiw.quality.report import score_histograms
from ieiw.quality.scoring import ScoringModels, is_scored, read_scores, run_score_shard, summary
from ieiw.storage import fs, manifest
from ieiw.storage.shards import expand_shard_urls
from ieiw.storage.stage_folder import Rebuild

_MODELS: dict[str, ScoringModels] = {}
_CACHES: dict[tuple[str, str], EmbeddingCache] = {}
_LOCK = threading.Lock()


def scoring_models(config: QualityConfig) -> ScoringModels:
    """The scoring models of this worker process, loaded on first use."""
    key = config.scoring.model_dump_json()
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = ScoringModels.load(config.scoring)
        return _MODELS[key]


def shared_cache(config: QualityConfig, scores_url: str) -> EmbeddingCache:
    cache = embedding_cache(config, scores_url)
    with _LOCK:
        return _CACHES.setdefault((cache.url, config.scoring.embedder.identity()), cache)


@task(name="score-shard", cache_policy=NONE)
def score_shard_task(shard_url: str, scores_url: str, config_json: str) -> dict:
    config = QualityConfig.model_validate_json(config_json)
    models = scoring_models(config)
    return run_score_shard(
        shard_url, scores_url, models, shared_cache(config, scores_url), config.scoring.batch_size
    )


def candidate_shards(candidates_url: str) -> list[str]:
    return expand_shard_urls([fs.join(candidates_url, manifest.SHARD_DIR)])


@flow(name="score")
def score_flow(
    candidates_url: str,
    scores_url: str | None = None,
    config: dict | None = None,
    shards_per_wave: int = 8,
    rebuild: Rebuild = "no",
) -> dict:
    """Score every candidate shard of ``candidates_url`` that has no scores part yet."""
    logger = get_run_logger()
    quality = QualityConfig.model_validate(config or {})
    scores_url = scores_url or default_scores_url(candidates_url)
    shards = candidate_shards(candidates_url)
    pending = [s for s in shards if not is_scored(scores_url, s)]
    logger.info("%d candidate shards, %d to score", len(shards), len(pending))
    config_json = quality.model_dump_json()
    results = []
    for start in range(0, len(pending), shards_per_wave):
        wave = pending[start : start + shards_per_wave]
        futures = score_shard_task.map(wave, scores_url=scores_url, config_json=config_json)
        results += [f.result() for f in futures]
    scores = read_scores(scores_url)
    totals = summary(scores)
    publish_score_artifacts(totals, scores)
    return {"scores_url": scores_url, "shards": len(shards), "scored_now": len(results), **totals}


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
