"""Assemble the crawl from a config: the lead's part (state file, source, listing) and a worker's part
(fetcher, download cache and records, crawler), and where the crawl keeps things on the build's store.

::

    <stage>/crawl_state.sqlite     the lead's crawl state (a local file; web_edits.state_path elsewhere)
    <stage>/crawl/images/          downloaded images by content (download.cache_dir, if set, instead)
    <stage>/crawl/downloads/       each URL's outcome, read by every worker before fetching it
    <stage>/crawl/outcomes/        each batch's post outcomes, until the lead records them in its state

Both parts of a process share its fetcher (:func:`process_fetcher`: one robots.txt cache, one limiter),
whose limiter comes from the stage's :class:`~ieiw.pipelines.web.limits.LimitsFactory`: this process's
limits by default, or limits every process of the build shares.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from functools import partial

from ieiw.pipelines.web.config import DownloadConfig, DumpSourceConfig, RedditSourceConfig, WebEditsConfig
from ieiw.pipelines.web.crawl import Crawler, Listing, read_outcomes
from ieiw.pipelines.web.downloader import DownloadRecords, ImageDownloader
from ieiw.pipelines.web.fetcher import SafeFetcher
from ieiw.pipelines.web.images import ImageCache
from ieiw.pipelines.web.limits import LimitsFactory, ProcessLimits, limit_host
from ieiw.pipelines.web.posts import PostSource
from ieiw.pipelines.web.reddit_dump import RedditDumpSource
from ieiw.pipelines.web.reddit_json import RedditSource
from ieiw.pipelines.web.state import CrawlState
from ieiw.storage import fs
from ieiw.storage.runner import worker_model
from ieiw.storage.stage import HOST, ModelSpec, model_key

STATE_FILE = "crawl_state.sqlite"
CRAWL_DIR = "crawl"


def fetcher_spec(download: DownloadConfig, limits: LimitsFactory) -> ModelSpec:
    """The process's fetcher for these download settings and limits, as a per-process model."""
    return ModelSpec(
        model_key("web_fetcher", None, download.model_dump(mode="json"), limits.describe()),
        partial(_make_fetcher, download, limits),
        HOST,
    )


def _make_fetcher(download: DownloadConfig, limits: LimitsFactory) -> SafeFetcher:
    return SafeFetcher(download, limits=limits(download))


def process_fetcher(download: DownloadConfig, limits: LimitsFactory | None = None) -> SafeFetcher:
    """The fetcher every crawl of this process with these settings shares (its robots.txt cache and its
    limiter): the lead's listing and a batch's downloads in one process ask for robots.txt once."""
    return worker_model(fetcher_spec(download, limits or ProcessLimits()))


def build_source(config: WebEditsConfig, fetcher: SafeFetcher) -> PostSource:
    if isinstance(config.source, RedditSourceConfig):
        return RedditSource(config.source, fetcher, config.skip_authors)
    if isinstance(config.source, DumpSourceConfig):
        return RedditDumpSource(config.source, config.skip_authors)
    raise TypeError(f"unknown source {type(config.source).__name__}")


def source_hosts(config: WebEditsConfig) -> list[str]:
    """The hosts the source itself talks to (its listings and answers), known before any post is."""
    if isinstance(config.source, RedditSourceConfig):
        source = config.source
        return sorted({limit_host(u) for u in (source.base_url, source.oauth_base_url, source.token_url)})
    return []


def state_path(config: WebEditsConfig, stage_dir: str) -> str:
    """The state file: configured, or next to the manifest (the stage folder must then be local)."""
    if config.state_path:
        return config.state_path
    if "://" in stage_dir and not stage_dir.startswith("file://"):
        raise ValueError(
            f"the stage output {stage_dir} is not local: set web_edits.state_path to a local file"
        )
    return os.path.join(stage_dir.removeprefix("file://"), STATE_FILE)


@dataclass(frozen=True)
class CrawlPlaces:
    """Where a stage's crawl keeps what its workers share, on the build's store."""

    images: str
    downloads: str
    outcomes: str

    @classmethod
    def of(cls, config: WebEditsConfig, stage_url: str) -> CrawlPlaces:
        crawl = fs.join(stage_url, CRAWL_DIR)
        images = config.download.cache_dir or fs.join(crawl, "images")
        return cls(images, fs.join(crawl, "downloads"), fs.join(crawl, "outcomes"))


@dataclass
class CrawlWorker:
    """The crawl of one worker process: what a batch needs to download its posts. No state file."""

    fetcher: SafeFetcher
    downloader: ImageDownloader
    crawler: Crawler
    places: CrawlPlaces

    def close(self) -> None:
        """Its threads (the fetcher is the process's: :func:`process_fetcher`)."""
        self.crawler.close()


def build_worker(config: WebEditsConfig, stage_url: str, limits: LimitsFactory | None = None) -> CrawlWorker:
    """A worker's crawl of the stage at ``stage_url``, its requests under ``limits``."""
    limits = limits or ProcessLimits()
    places = CrawlPlaces.of(config, stage_url)
    fetcher = process_fetcher(config.download, limits)
    downloader = ImageDownloader(
        fetcher, DownloadRecords(places.downloads), ImageCache(places.images), config.download
    )
    return CrawlWorker(
        fetcher, downloader, Crawler(build_source(config, fetcher), downloader, config), places
    )


@dataclass
class CrawlLead:
    """The lead's crawl: the state file, the source and the listing made from them."""

    fetcher: SafeFetcher
    state: CrawlState
    listing: Listing
    places: CrawlPlaces
    state_file: tuple[int, int] | None = None  # (device, inode) of the state file when it was opened

    def close(self) -> None:
        """Its state file (the fetcher is the process's: :func:`process_fetcher`)."""
        self.state.close()

    def is_current(self) -> bool:
        """The state file is still the one this crawl opened (a rebuild deletes the stage's folder)."""
        return self.state_file is not None and _file_identity(self.state.path) == self.state_file

    def record_outcomes(self) -> int:
        """Record the post outcomes the batches reported (in the order they were written) in the state,
        then remove their reports; returns how many posts."""
        n = 0
        for url, outcomes in read_outcomes(self.places.outcomes):
            n += self.state.record_outcomes(outcomes)
            fs.remove(url)
        return n

    def snapshot(self) -> dict:
        """What the listing saw in this process, and what the state file holds now: posts by status,
        the posts waiting for the next run by reason, downloads by outcome (every run's)."""
        listing: Counter = self.listing.counts
        requests = {k.removeprefix("requests/"): n for k, n in listing.items() if k.startswith("requests/")}
        return {
            **{k: n for k, n in sorted(listing.items()) if not k.startswith("requests/")},
            "listing_requests_by_host": dict(sorted(requests.items())),
            "posts_waiting": dict(sorted(self.state.deferred_reasons().items())),
            "posts_by_status": dict(sorted(self.state.post_counts().items())),
            "downloads_by_outcome": dict(sorted(self.state.download_counts().items())),
        }


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def build_lead(
    config: WebEditsConfig,
    stage_url: str,
    fingerprint: str | None = None,
    limits: LimitsFactory | None = None,
) -> CrawlLead:
    """The lead's crawl of ``config``; its state is bound to ``fingerprint`` (reset if made for another)."""
    fetcher = process_fetcher(config.download, limits)
    state = CrawlState(state_path(config, stage_url))
    if fingerprint is not None:
        state.bind(fingerprint)
    listing = Listing(build_source(config, fetcher), state, config)
    return CrawlLead(fetcher, state, listing, CrawlPlaces.of(config, stage_url), _file_identity(state.path))
