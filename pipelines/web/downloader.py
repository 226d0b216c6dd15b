"""Download one image URL at most once: resolve the host link, fetch safely, check, cache, record.

What every worker of a build shares lives on the build's store (a local folder, or an fsspec URL every
machine reaches): the images, content-addressed (:class:`~ieiw.pipelines.web.images.ImageCache`), and
each URL's outcome as one small JSON file (:class:`DownloadRecords`), written once its image is in the
cache. A worker reads a URL's record before fetching it, so a finished download (or a permanent failure)
is never fetched again, whichever process or machine made it, and a killed crawl loses nothing it
finished.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import asdict, replace

from ieiw.pipelines.web.config import DownloadConfig
from ieiw.pipelines.web.fetcher import FetchError, SafeFetcher
from ieiw.pipelines.web.hosts import resolve_image_url
from ieiw.pipelines.web.images import ImageCache, check_image, write_whole
from ieiw.pipelines.web.state import DownloadRecord
from ieiw.pipelines.web.tally import count
from ieiw.storage import fs


class DownloadRecords:
    """Each URL's last download outcome: ``<root>/<aa>/<sha256 of the URL>.json``, written whole."""

    def __init__(self, root: str) -> None:
        self.root = str(root)

    def path(self, url: str) -> str:
        digest = hashlib.sha256(url.encode("utf-8")).hexdigest()
        return fs.join(self.root, digest[:2], f"{digest}.json")

    def get(self, url: str) -> DownloadRecord | None:
        try:
            data = json.loads(fs.read_bytes(self.path(url)))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # unreadable: fetch it again
            return None
        return DownloadRecord.from_json(data) if data.get("url") == url else None

    def put(self, record: DownloadRecord) -> None:
        """Written whole, after its image (:func:`~ieiw.pipelines.web.images.write_whole`)."""
        write_whole(self.path(record.url), json.dumps(asdict(record)).encode("utf-8"))

    def __iter__(self) -> Iterator[DownloadRecord]:
        """Every record (for tests and tools; a crawl never lists them)."""
        filesystem, root = fs.get_fs(self.root)
        if not filesystem.exists(root):
            return
        for path in sorted(filesystem.find(root)):
            if path.endswith(".json"):
                with filesystem.open(path, "rb") as handle:
                    yield DownloadRecord.from_json(json.loads(handle.read()))


class ImageDownloader:
    """Finished downloads (and permanent failures) are read from the records, never fetched again."""

    def __init__(
        self, fetcher: SafeFetcher, records: DownloadRecords, cache: ImageCache, config: DownloadConfig
    ) -> None:
        self.fetcher = fetcher
        self.records = records
        self.cache = cache
        self.config = config
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._tried: set[str] = set()  # URLs this process attempted (a transient failure is final for it)
        self.fetched = 0  # downloads actually attempted over the network by this process
        self.reused = 0

    def _final(self, record: DownloadRecord | None, run: str) -> bool:
        if record is None:
            return False
        if record.ok:
            return self.cache.holds(record.path, record.sha256)
        if not record.transient or not self.config.retry_failed_transient:
            return True
        # a transient failure is retried by a later run, not again by the run that met it (any worker)
        return (bool(run) and record.run == run) or (not run and record.url in self._tried)

    def download(self, url: str, run: str = "") -> DownloadRecord:
        """The outcome of ``url``: from its record when final, else fetched now (``run``: the token of
        the stage run asking, recorded with the outcome)."""
        with self._guard:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:  # two posts sharing an image: the second waits and reuses the first's result
            prior = self.records.get(url)
            if self._final(prior, run):
                return self._reuse(prior)
            record = replace(self._fetch(url), run=run)
            self.records.put(record)
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
