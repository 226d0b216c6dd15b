"""The ``filter`` flow: apply the policy to scored candidates, write the final shards, manifest and report.

Thin: it computes the build-wide duplicate and eval-leak flags once, maps
:func:`ieiw.quality.filtering.run_filter_shard` over the candidate shards (a rerun skips committed
batches), consolidates the manifest, writes the report and publishes artifacts (counts by drop
reason, histograms before and after, links to the HTML pages).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from ieiw.flows.score import candidate_shards, markdown_images, scoring_models, shared_cache
from ieiw.quality.config import QualityConfig, default_scores_url
from ieiw.quality.filtering import eval_set_from_urls, prepare_flags, read_flags, run_filter_shard
from ieiw.quality.report import write_report
from ieiw.quality.scoring import read_scores
from ieiw.storage import fs, manifest
from ieiw.storage.stage_folder import Rebuild


@task(name="filter-shard", cache_policy=NONE)
def filter_shard_task(shard_url: str, scores_url: str, out_url: str, config_json: str) -> dict:
    config = QualityConfig.model_validate_json(config_json)
    report = run_filter_shard(
        shard_url, scores_url, out_url, config.policy, read_flags(out_url), config.shard
    )
    return {
        "batch": report.batch,
        "kept": report.kept,
        "dropped": dict(report.dropped),
        "by_task": dict(report.by_task),
        "shards": report.shards,
        "skipped": report.skipped,
        "seconds": report.seconds,
    }


@flow(name="filter")
def filter_flow(
    candidates_url: str,
    out_url: str,
    scores_url: str | None = None,
    config: dict | None = None,
    report_url: str | None = None,
    shards_per_wave: int = 8,
    rebuild: Rebuild = "no",
) -> dict:
    """Filter the scored candidates of ``candidates_url`` into the final stage ``out_url``."""
    logger = get_run_logger()
    quality = QualityConfig.model_validate(config or {})
    scores_url = scores_url or default_scores_url(candidates_url)
    report_url = report_url or fs.join(out_url, "report")
    duplicates = quality.policy.duplicates
    embed_eval = bool(quality.eval_set) and duplicates.eval_clip_min_cosine is not None
    embedder = scoring_models(quality).embedder if embed_eval else None
    eval_set = eval_set_from_urls(quality.eval_set, embedder) if quality.eval_set else None
    uses_embeddings = embed_eval or duplicates.clip_min_cosine is not None
    cache = shared_cache(quality, scores_url) if uses_embeddings else None
    flags = prepare_flags(scores_url, out_url, quality.policy, cache, eval_set)
    logger.info("%d samples flagged (duplicates, eval leaks, missing embeddings)", len(flags))
    shards = candidate_shards(candidates_url)
    config_json = quality.model_dump_json()
    results = []
    for start in range(0, len(shards), shards_per_wave):
        wave = shards[start : start + shards_per_wave]
        futures = filter_shard_task.map(wave, scores_url=scores_url, out_url=out_url, config_json=config_json)
        results += [f.result() for f in futures]
    manifest.consolidate(out_url)
    report = write_report(
        candidates_url,
        read_scores(scores_url),
        out_url,
        report_url,
        quality.policy,
        gallery_limit=quality.report_images,
    )
    publish_filter_artifacts(report)
    final = manifest.read_manifest(out_url)
    totals = {
        "candidates": int(len(final)),
        "kept": int(final["kept"].sum()) if len(final) else 0,
        "dropped": {
            str(k): int(v) for k, v in final.loc[~final["kept"], "drop_reason"].value_counts().items()
        },
        "batches": len(results),
        "batches_skipped": sum(1 for r in results if r["skipped"]),
    }
    logger.info("filter: %s", totals)
    return {"out_url": out_url, "report": report["files"], **totals}


def publish_filter_artifacts(report: dict) -> None:
    create_table_artifact(
        report["counts"] or [{"outcome": "none"}],
        key="quality-filter-outcomes",
        description="every candidate's outcome (kept or drop reason) by task",
    )
    if report["histograms"]:
        create_markdown_artifact(
            markdown_images(report["histograms"]),
            key="quality-filter-histograms",
            description="score histograms per task, before (grey) and after (blue)",
        )
    for name in ("index_html", "dropped_html", "gallery_html"):
        url = report["files"][name]
        link = url if "://" in url else Path(url).resolve().as_uri()
        create_link_artifact(
            link, link_text=name.replace("_html", ""), key=f"quality-{name.replace('_', '-')}"
        )
