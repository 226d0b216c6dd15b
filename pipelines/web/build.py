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
    fetcher: SafeFetcher
    state: CrawlState
    downloader: ImageDownloader
    crawler: Crawler

    def close(self) -> None:
        self.crawler.close()
        self.state.close()
        self.fetcher.session.close()

    def stats(self) -> dict:
        deferred = {f"posts_deferred_{r}": n for r, n in self.state.deferred_reasons().items()}
        return {
            **dict(self.crawler.counts),
            **deferred,  # the posts waiting for the next run now, as the state says
            "downloads_fetched": self.downloader.fetched,
            "downloads_reused": self.downloader.reused,
            "requests_by_host": dict(self.fetcher.requests_made),
            "downloads_by_outcome": self.state.download_counts(),
            "posts_by_status": self.state.post_counts(),
        }


def build_crawl(config: WebEditsConfig, stage_dir: str, fingerprint: str | None = None) -> CrawlSetup:
    """The crawl of ``config``; its state is bound to ``fingerprint`` (reset if made for another)."""
    fetcher = SafeFetcher(config.download)
    state = CrawlState(state_path(config, stage_dir))
    if fingerprint is not None:
        state.bind(fingerprint)
    downloader = ImageDownloader(fetcher, state, ImageCache(config.download.cache_dir), config.download)
    crawler = Crawler(build_source(config, fetcher), downloader, state, config)
    return CrawlSetup(fetcher, state, downloader, crawler)
