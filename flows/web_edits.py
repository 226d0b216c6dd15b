"""The `web_edits` flow: crawl photoshop-request posts, keep same-scene edits as web_edit pairs."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ieiw.flows.config import RunnerConfig
from ieiw.flows.fingerprints import model_paths, section_fingerprint
from ieiw.flows.stage_runner import artifact_key, run_stage
from ieiw.pipelines.web.build import build_crawl
from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.pipelines.web.crawl import CrawledPost
from ieiw.pipelines.web.pairing import web_edits_stage
from ieiw.storage import fs, manifest
from ieiw.storage.schema import Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import Rebuild

STAGE = "web_edits"


def web_edits_batch(posts: list[CrawledPost], config: WebEditsConfig) -> list[Result]:
    """One batch of crawled posts through the pairing stage (no model to load: SSIM and ORB)."""
    return web_edits_stage(posts, config.pairing)


@flow(name="web_edits", log_prints=True)
def web_edits(
    config: WebEditsConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
    rebuild: Rebuild = "no",
) -> dict:
    """Crawl the configured source into ``<output>/web_edits`` (shards, manifest, crawl state); resumable."""
    logger = get_run_logger()
    runner = runner or RunnerConfig()
    stage_url = fs.join(output, STAGE)
    fs.makedirs(stage_url)
    setup = build_crawl(config, stage_url)
    try:
        done = manifest.completed_record_ids(stage_url)
        summary = run_stage(
            STAGE,
            setup.crawler.crawl(skip=done),
            web_edits_batch,
            config,
            stage_url,
            shards,
            batch_size=config.batch_size,
            runner=runner,
            fingerprint=section_fingerprint(STAGE, config),
            rebuild=rebuild,
            info={"models": model_paths(config)},
            total=config.max_posts,
        )
        crawl = setup.stats()
    finally:
        setup.close()
    summary["crawl"] = crawl
    publish_crawl(crawl, summary)
    logger.info(
        "web_edits: %d posts seen, %d pairs kept; downloads %s",
        crawl.get("posts_seen", 0),
        summary["kept"],
        crawl["downloads_by_outcome"],
    )
    return summary


def publish_crawl(crawl: dict, summary: dict) -> None:
    """Posts seen, pairs kept, drops and downloads by reason, requests per host: as UI artifacts."""
    rows = [
        {"what": "posts seen", "reason": "", "count": crawl.get("posts_seen", 0)},
        {"what": "posts already done", "reason": "", "count": crawl.get("posts_already_done", 0)},
        {"what": "pairs kept", "reason": "", "count": summary["kept"]},
    ]
    rows += [{"what": "dropped", "reason": r, "count": n} for r, n in summary["dropped"].items()]
    rows += [
        {"what": "deferred to the next run", "reason": k.removeprefix("posts_deferred_"), "count": n}
        for k, n in sorted(crawl.items())
        if k.startswith("posts_deferred_")
    ]
    rows += [{"what": "downloads", "reason": r, "count": n} for r, n in crawl["downloads_by_outcome"].items()]
    key = artifact_key(STAGE)
    create_table_artifact(rows, key=f"{key}-crawl", description="web_edits: posts, pairs, drops, downloads")
    lines = ["# web_edits crawl", "", "| host | requests |", "|---|---|"]
    lines += [f"| {h} | {n} |" for h, n in sorted(crawl["requests_by_host"].items())]
    lines += [
        "",
        f"Downloads fetched this run: {crawl['downloads_fetched']}, "
        f"reused from the state file: {crawl['downloads_reused']}",
    ]
    create_markdown_artifact("\n".join(lines), key=f"{key}-requests", description="web_edits: requests made")
