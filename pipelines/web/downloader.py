"""Download one image URL at most once: resolve the host link, fetch safely, check, cache, record."""

from __future__ import annotations

import os
import threading

from ieiw.pipelines.web.config import DownloadConfig
from ieiw.pipelines.web.fetcher import FetchError, SafeFetcher
from ieiw.pipelines.web.hosts import resolve_image_url
from ieiw.pipelines.web.images import ImageCache, check_image
from ieiw.pipelines.web.state import CrawlState, DownloadRecord
from ieiw.pipelines.web.tally import count


class ImageDownloader:
    """Finished downloads (and permanent failures) are read from the state file, never fetched again."""

    def __init__(
        self, fetcher: SafeFetcher, state: CrawlState, cache: ImageCache, config: DownloadConfig
    ) -> None:
        self.fetcher = fetcher
        self.state = state
        self.cache = cache
        self.config = config
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._tried: set[str] = set()  # URLs attempted in this run: a transient failure is final for the run
        self.fetched = 0  # downloads actually attempted over the network by this run
        self.reused = 0

    def _final(self, record: DownloadRecord | None) -> bool:
        if record is None:
            return False
        if record.ok:
            return bool(record.path) and os.path.exists(record.path)
        return record.url in self._tried or not record.transient or not self.config.retry_failed_transient

    def download(self, url: str) -> DownloadRecord:
        prior = self.state.download(url)
        if self._final(prior):
            return self._reuse(prior)
        with self._guard:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:  # two posts sharing an image: the second waits and reuses the first's result
            prior = self.state.download(url)
            if self._final(prior):
                return self._reuse(prior)
            record = self._fetch(url)
            self.state.record_download(record)
            with self._guard:
                self._tried.add(url)
                self.fetched += 1
            count("downloads_fetched")
            count(f"downloads/{'ok' if record.ok else record.reason}")
            return record

    def _reuse(self, record: DownloadRecord) -> DownloadRecord:
        with self._guard:
            self.reused += 1
        count("downloads_reused")
        return record

    def _fetch(self, url: str) -> DownloadRecord:
        try:
            direct = resolve_image_url(url, self.fetcher)
            fetched = self.fetcher.get(direct, self.config.max_bytes)
            checked = check_image(fetched.body, self.config.max_pixels, self.config.min_side)
            sha256, path = self.cache.put(fetched.body, checked.format)
        except FetchError as error:
            return DownloadRecord(
                url=url, ok=False, reason=error.reason, detail=error.detail[:500], transient=error.transient
            )
        return DownloadRecord(
            url=url,
            ok=True,
            final_url=fetched.url,
            sha256=sha256,
            path=path,
            width=checked.width,
            height=checked.height,
            nbytes=len(fetched.body),
            content_type=fetched.content_type,
            attempts=fetched.attempts,
        )
