"""The ``filter`` flow: apply the policy to scored candidates, write the final shards, manifest and report.

Thin: it opens the final stage folder with the filter's fingerprint (:func:`filter_fingerprint`: the
policy with its duplicate settings, the evaluation set by content, the digests of the score and
candidates stages), so a changed threshold stops before any work with
:class:`~ieiw.storage.stage_folder.StageChanged` unless ``rebuild``. The build-wide duplicate and
eval-leak flags depend on the whole input, so the stage records the input it was computed over
(:func:`~ieiw.quality.filtering.filter_input`); when more candidate or score batches were committed
since, the stage is rebuilt, with a warning. The lease holder computes the flags once, then
:func:`ieiw.quality.filtering.run_filter_shard` is mapped over the candidate shards whose batch is
not committed, the run is recorded, and the report and artifacts (counts by drop reason, histograms
before and after, links to the HTML pages) are written.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from ieiw.flows.fingerprints import section_fingerprint
from ieiw.flows.score import candidate_shards, markdown_images, score_fingerprint, scoring_models
from ieiw.flows.score import upstream_digest as recorded_digest
from ieiw.flows.stage_runner import current_run_id, runner_device
from ieiw.flows.storage_errors import store_errors
from ieiw.quality.build_flags import eval_set_from_urls, flags_for, prepare_flags
from ieiw.quality.config import QualityConfig, default_scores_url, embedding_cache
from ieiw.quality.filtering import (
    STAGE,
    check_scores_cover_policy,
    filter_batch_name,
    filter_input,
    run_filter_shard,
    scores_for,
)
from ieiw.quality.identities import data_identity
from ieiw.quality.policy import FilterPolicy
from ieiw.quality.report import write_report
from ieiw.quality.scoring import STAGE as SCORE_STAGE
from ieiw.quality.stage_target import StageTarget
from ieiw.storage import fs, manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import Rebuild, StageChanged, StageWriter, open_stage, read_record


def filter_fingerprint(
    quality: QualityConfig, candidates_url: str, scores_url: str, wanted: Fingerprint | None = None
) -> Fingerprint:
    """What determines the final shards: the policy (with its duplicate settings), the evaluation set
    by content, and the digests of the score and candidates stages.

    The score stage must hold scores made with this config's scoring settings and models: if it
    does not (or holds none), this raises before anything is opened. ``wanted`` is the score stage's
    fingerprint for this config, when the caller has it already.
    """
    wanted = wanted or score_fingerprint(quality.scoring, candidates_url)
    record = read_record(scores_url)
    if record is None:
        raise FileNotFoundError(f"{scores_url} holds no scores: run the score stage first")
    recorded = Fingerprint.from_record(record["fingerprint"])
    changes = wanted.changes(recorded)
    if changes or recorded.digest != wanted.digest:
        raise StageChanged(SCORE_STAGE, scores_url, changes or ["(the fingerprint's digest differs)"])
    settings = {
        "policy": quality.policy.model_dump(mode="json"),
        "eval_set": [data_identity(url) for url in quality.eval_set],
    }
    upstream = {"score": recorded.digest, "candidates": recorded_digest(candidates_url)}
    return section_fingerprint(STAGE, settings, upstream=upstream)


@contextlib.contextmanager
def open_filter_stage(
    out_url: str, fingerprint: Fingerprint, rebuild: Rebuild, info: dict, logger
) -> Iterator[StageWriter]:
    """The final stage, held by this run, valid for ``info["input"]``: a stage computed over another
    input (more committed candidate or score batches) with the same fingerprint is rebuilt."""
    current = info["input"]
    with contextlib.ExitStack() as held:
        with store_errors(f"stage {STAGE}", out_url):
            writer = held.enter_context(
                open_stage(out_url, fingerprint, rebuild=rebuild, run=current_run_id(), info=info)
            )
        recorded = ((read_record(out_url) or {}).get("info") or {}).get("input")
        if writer.rebuilt or recorded == current:
            yield writer
            return
    before = recorded or {}
    logger.warning(
        "filter: its input changed since it was computed (candidate shards %s -> %s, score batches "
        "%s -> %s): duplicate flags depend on the whole input, so the final stage is rebuilt",
        before.get("candidate_shards", "?"),
        current["candidate_shards"],
        before.get("score_batches", "?"),
        current["score_batches"],
    )
    with contextlib.ExitStack() as held:
        with store_errors(f"stage {STAGE}", out_url):
            writer = held.enter_context(
                open_stage(out_url, fingerprint, rebuild="yes", run=current_run_id(), info=info)
            )
        yield writer


@task(name="filter-shard", cache_policy=NONE)
def filter_shard_task(
    shard_url: str, scores, flags, target: StageTarget, policy_json: str, spec_json: str
) -> dict:
    policy = FilterPolicy.model_validate_json(policy_json)
    spec = ShardSpec.model_validate_json(spec_json)
    with store_errors(f"filter batch of {shard_url}", target.url):
        report = run_filter_shard(shard_url, scores, flags, policy, target, spec)
    return {
        "batch": report.batch,
        "kept": report.kept,
        "dropped": dict(report.dropped),
        "by_task": dict(report.by_task),
        "shards": report.shards,
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
    score_print = score_fingerprint(quality.scoring, candidates_url)
    fingerprint = filter_fingerprint(quality, candidates_url, scores_url, score_print)
    # One snapshot of the input: the committed candidate shards and score batches, read once.
    shards = candidate_shards(candidates_url)
    current = filter_input(shards, scores_url)
    score_batches = manifest.completed_batches(scores_url)
    scores = scores_for(scores_url, shards, score_batches)
    if set(scores["fingerprint"].dropna()) - {fingerprint.upstream["score"]}:
        raise RuntimeError(f"{scores_url} holds scores of another fingerprint than its record: rebuild score")
    check_scores_cover_policy(scores, quality.policy)
    unscored = len(shards) - len({s for s in scores["shard"]})
    if unscored > 0:
        logger.warning("filter: %d committed candidate shards have no scores yet (dropped)", unscored)
    info = {
        "input": current,
        "candidates_url": candidates_url,
        "scores_url": scores_url,
        "report_url": report_url,
    }
    with open_filter_stage(out_url, fingerprint, rebuild, info, logger) as writer:
        if writer.rebuilt and writer.changes:
            logger.warning("filter: rebuilding (%s)", "; ".join(writer.changes))
        target = StageTarget.of(writer)
        duplicates = quality.policy.duplicates
        embed_eval = bool(quality.eval_set) and duplicates.eval_clip_min_cosine is not None
        eval_set = None
        if quality.eval_set:
            identities = repr(sorted(score_print.models.items()))
            embedder = scoring_models(quality, identities).embedder if embed_eval else None
            eval_set = eval_set_from_urls(quality.eval_set, embedder)
        uses_embeddings = embed_eval or duplicates.clip_min_cosine is not None
        cache = embedding_cache(quality, scores_url) if uses_embeddings else None
        with store_errors(f"stage {STAGE}", out_url):
            flags = prepare_flags(target, scores, quality.policy, cache, eval_set, current["digest"])
        logger.info("%d samples flagged (duplicates, eval leaks, missing embeddings)", len(flags))
        committed = writer.committed_batches()
        pending = [s for s in shards if filter_batch_name(s) not in committed]
        by_shard = {name: group for name, group in scores.groupby("shard")}
        policy_json, spec_json = quality.policy.model_dump_json(), quality.shard.model_dump_json()
        results = []
        for start in range(0, len(pending), shards_per_wave):
            futures = []
            for shard in pending[start : start + shards_per_wave]:
                shard_scores = by_shard.get(posixpath.basename(shard), scores.iloc[0:0])
                shard_flags = flags_for(flags, shard_scores["key"])
                futures.append(
                    filter_shard_task.submit(shard, shard_scores, shard_flags, target, policy_json, spec_json)
                )
            results += [f.result() for f in futures]
        with store_errors(f"stage {STAGE}", out_url):
            writer.finish(
                {
                    "batches": len(shards),
                    "filtered": len(results),
                    "kept": sum(r["kept"] for r in results),
                    "compute_seconds": round(sum(r["seconds"] for r in results), 3),
                    "device": runner_device(),
                }
            )
            report = write_report(
                candidates_url,
                scores,
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
        "batches": len(shards),
        "batches_skipped": len(shards) - len(results),
        "fingerprint": writer.digest,
        "rebuilt": writer.rebuilt,
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
