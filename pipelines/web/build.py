"""Assemble the crawl from a config: fetcher, state file, cache, source adapter, downloader, crawler."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ieiw.pipelines.web.config import DumpSourceConfig, RedditSourceConfig, WebEditsConfig
from ieiw.pipelines.web.crawl import Crawler
from ieiw.pipelines.web.downloader import ImageDownloader
from ieiw.pipelines.web.fetcher import SafeFetcher
from ieiw.pipelines.web.images import ImageCache
from ieiw.pipelines.web.posts import PostSource
from ieiw.pipelines.web.reddit_dump import RedditDumpSource
from ieiw.pipelines.web.reddit_json import RedditSource
from ieiw.pipelines.web.state import CrawlState

STATE_FILE = "crawl_state.sqlite"


def build_source(config: WebEditsConfig, fetcher: SafeFetcher) -> PostSource:
    if isinstance(config.source, RedditSourceConfig):
        return RedditSource(config.source, fetcher, config.skip_authors)
    if isinstance(config.source, DumpSourceConfig):
        return RedditDumpSource(config.source, config.skip_authors)
    raise TypeError(f"unknown source {type(config.source).__name__}")


def state_path(config: WebEditsConfig, stage_dir: str) -> str:
    """The state file: configured, or next to the manifest (the stage folder must then be local)."""
    if config.state_path:
        return config.state_path
    if "://" in stage_dir and not stage_dir.startswith("file://"):
        raise ValueError(
            f"the stage output {stage_dir} is not local: set web_edits.state_path to a local file"
        )
    return os.path.join(stage_dir.removeprefix("file://"), STATE_FILE)


@dataclass
class CrawlSetup:
    """The crawl of one process: what a batch needs to download and pair its posts."""

    fetcher: SafeFetcher
    state: CrawlState
    downloader: ImageDownloader
    crawler: Crawler
    state_file: tuple[int, int] | None = None  # (device, inode) of the state file when it was opened

    def close(self) -> None:
        self.crawler.close()
        self.state.close()
        self.fetcher.session.close()

    def is_current(self) -> bool:
        """The state file is still the one this crawl opened (a rebuild deletes the stage's folder)."""
        return self.state_file is not None and _file_identity(self.state.path) == self.state_file

    def snapshot(self) -> dict:
        """What the listing saw in this process, and what the state file holds now: posts by status,
        the posts waiting for the next run by reason, downloads by outcome (every run's)."""
        listing = self.crawler.counts
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


def build_crawl(config: WebEditsConfig, stage_dir: str, fingerprint: str | None = None) -> CrawlSetup:
    """The crawl of ``config``; its state is bound to ``fingerprint`` (reset if made for another)."""
    fetcher = SafeFetcher(config.download)
    state = CrawlState(state_path(config, stage_dir))
    if fingerprint is not None:
        state.bind(fingerprint)
    downloader = ImageDownloader(fetcher, state, ImageCache(config.download.cache_dir), config.download)
    crawler = Crawler(build_source(config, fetcher), downloader, state, config)
    return CrawlSetup(fetcher, state, downloader, crawler, _file_identity(state.path))
