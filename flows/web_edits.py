"""The `web_edits` flow: crawl photoshop-request posts, keep same-scene edits as web_edit pairs.

The input is the crawl's numbered listing (:meth:`~ieiw.pipelines.web.crawl.Crawler.listing`: the
posts in the order the crawl state first recorded them), cut by :func:`~ieiw.flows.stage_runner.run_stage`
into consecutive batches before any download, as img2dataset numbers its input shards. Each batch
task downloads its posts (concurrently, within the per-host limits), pairs them and commits once, so
a batch's name and contents never depend on which download finished first or on a killed run.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ieiw.flows.config import RunnerConfig
from ieiw.flows.fingerprints import section_fingerprint
from ieiw.flows.stage_runner import artifact_key, run_stage
from ieiw.pipelines.web.build import CrawlSetup, build_crawl
from ieiw.pipelines.web.config import WebEditsConfig, output_settings
from ieiw.pipelines.web.pairing import crawl_and_pair, instruction_method
from ieiw.pipelines.web.posts import WebPost
from ieiw.storage import fs, manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.schema import Result
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage_folder import Rebuild

STAGE = "web_edits"

# The crawl (fetcher, limits, state, threads) of each running flow, per process: a batch task finds
# its run's crawl here, and a worker process that has none builds its own from the settings.
_CRAWLS: dict[str, CrawlSetup] = {}
_CRAWLS_LOCK = threading.Lock()


def web_fingerprint(config: WebEditsConfig) -> Fingerprint:
    """What shapes the pairs: the source, post filters, image acceptance, pairing and instructions.

    Rate and concurrency limits, timeouts, endpoints, credentials' variable names, address allowances,
    paths and batch sizes are not in it (:func:`~ieiw.pipelines.web.config.output_settings`); dump
    files enter by content.
    """
    return section_fingerprint(
        STAGE, output_settings(config), extra={"instruction": instruction_method(None)}
    )


@dataclass(frozen=True)
class WebBatchSettings:
    """What a batch task needs: the config, where the stage lives, and which crawl it belongs to."""

    config: WebEditsConfig
    stage_url: str
    crawl: str  # names this run's crawl in :data:`_CRAWLS`
    fingerprint: str  # the crawl state is bound to it


def crawl_for(settings: WebBatchSettings) -> CrawlSetup:
    """This run's crawl in this process, built the first time it is needed (after the stage is open)."""
    with _CRAWLS_LOCK:
        setup = _CRAWLS.get(settings.crawl)
        if setup is None:
            setup = _CRAWLS[settings.crawl] = build_crawl(
                settings.config, settings.stage_url, settings.fingerprint
            )
        return setup


def close_crawl(settings: WebBatchSettings) -> dict:
    """Close this run's crawl in this process; returns its statistics ({} if it never started)."""
    with _CRAWLS_LOCK:
        setup = _CRAWLS.pop(settings.crawl, None)
    if setup is None:
        return {}
    try:
        return setup.stats()
    finally:
        setup.close()


def web_edits_batch(posts: list[WebPost], settings: WebBatchSettings) -> list[Result]:
    """One batch of the listing: download its posts, pair them (SSIM and ORB: no model to load)."""
    return crawl_and_pair(posts, crawl_for(settings).crawler, settings.config.pairing)


def listing(settings: WebBatchSettings) -> Iterator[WebPost]:
    """The stage's input. Pulled only once ``run_stage`` holds the stage (so the state file is opened
    after a rebuild has wiped the folder, never before)."""
    setup = crawl_for(settings)
    yield from setup.crawler.listing(done=manifest.completed_record_ids(settings.stage_url))


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
    fingerprint = web_fingerprint(config)
    settings = WebBatchSettings(config, stage_url, uuid.uuid4().hex, fingerprint.digest)
    try:
        summary = run_stage(
            STAGE,
            listing(settings),
            web_edits_batch,
            settings,
            stage_url,
            shards,
            batch_size=config.batch_size,
            runner=runner,
            fingerprint=fingerprint,
            rebuild=rebuild,
            total=config.max_posts,
        )
    finally:
        crawl = close_crawl(settings)
    summary["crawl"] = crawl
    publish_crawl(crawl, summary)
    logger.info(
        "web_edits: %d posts seen, %d pairs kept; downloads %s",
        crawl.get("posts_seen", 0),
        summary["kept"],
        crawl.get("downloads_by_outcome", {}),
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
    rows += [
        {"what": "downloads", "reason": r, "count": n}
        for r, n in crawl.get("downloads_by_outcome", {}).items()
    ]
    key = artifact_key(STAGE)
    create_table_artifact(rows, key=f"{key}-crawl", description="web_edits: posts, pairs, drops, downloads")
    lines = ["# web_edits crawl", "", "| host | requests |", "|---|---|"]
    lines += [f"| {h} | {n} |" for h, n in sorted(crawl.get("requests_by_host", {}).items())]
    lines += [
        "",
        f"Downloads fetched this run: {crawl.get('downloads_fetched', 0)}, "
        f"reused from the state file: {crawl.get('downloads_reused', 0)}",
    ]
    create_markdown_artifact("\n".join(lines), key=f"{key}-requests", description="web_edits: requests made")
