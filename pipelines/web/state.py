"""The crawl state: the listing as first seen, posts, and every download's outcome, in SQLite (WAL).

The state is the lead's alone: the flow's process makes the listing and records what became of each
post and download, from the outcomes the workers report with their batches
(:class:`~ieiw.pipelines.web.crawl.PostOutcome`). No worker opens it: they share only the download
cache and its per-URL records on the build's store (:mod:`ieiw.pipelines.web.downloader`), so a worker on
another machine needs nothing on the lead's disk.

The **listing** numbers the posts in the order the source first gave them: it is the stage's input,
cut into batches before any download, so a rerun forms the same batches (with the same names) even
when a live listing has moved on since; posts new to the source come after the recorded ones.

The state is **bound** to the fingerprint of the settings that shape the pairs: opened for another
one, it starts afresh, since a recorded outcome (an image refused as too small, a listing of other
subreddits) may not hold under the new settings.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from ieiw.pipelines.web.posts import WebPost

if TYPE_CHECKING:
    from ieiw.pipelines.web.crawl import PostOutcome

SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    record_id TEXT PRIMARY KEY,
    post_json TEXT NOT NULL,
    status TEXT NOT NULL,            -- listed | crawled | dropped
    reason TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS listing (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT UNIQUE NOT NULL,
    post_json TEXT NOT NULL,
    listed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS downloads (
    url TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,
    reason TEXT,
    detail TEXT,
    final_url TEXT,
    sha256 TEXT,
    path TEXT,
    width INTEGER,
    height INTEGER,
    nbytes INTEGER,
    content_type TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    transient INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
"""


@dataclass
class DownloadRecord:
    """The outcome of downloading one URL: a cached, decodable image, or a failure with its reason."""

    url: str
    ok: bool
    reason: str | None = None
    detail: str = ""
    final_url: str | None = None
    sha256: str | None = None
    path: str | None = None
    width: int | None = None
    height: int | None = None
    nbytes: int | None = None
    content_type: str | None = None
    attempts: int = 0
    transient: bool = False
    run: str = ""  # the stage run that made this record (a transient failure is final within it)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DownloadRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class CrawlState:
    """Thread-safe access to the state file; every write is its own committed transaction."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # durable across a killed process
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def bind(self, fingerprint: str) -> bool:
        """Use the state for output made with ``fingerprint``; True when it was reset for it."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'fingerprint'").fetchone()
            if row is not None and row[0] == fingerprint:
                return False
            reset = row is not None
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if reset:
                    for table in ("listing", "posts", "downloads"):
                        self._conn.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed names)
                self._conn.execute(
                    "INSERT OR REPLACE INTO meta (name, value) VALUES ('fingerprint', ?)", (fingerprint,)
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return reset

    # -- the listing --------------------------------------------------------------------------------

    def listed(self, chunk: int = 256) -> Iterator[WebPost]:
        """The recorded listing, in the order first seen."""
        last = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT seq, post_json FROM listing WHERE seq > ? ORDER BY seq LIMIT ?", (last, chunk)
                ).fetchall()
            if not rows:
                return
            for seq, raw in rows:
                last = seq
                yield WebPost.from_json(json.loads(raw))

    def record_listed(self, post: WebPost) -> bool:
        """Append ``post`` to the listing; False if it was there already."""
        with self._lock:
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO listing (record_id, post_json, listed_at) VALUES (?, ?, ?)",
                (post.record_id, json.dumps(post.to_json()), time.time()),
            )
        return cursor.rowcount == 1

    # -- downloads ----------------------------------------------------------------------------------

    def download(self, url: str) -> DownloadRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT url, ok, reason, detail, final_url, sha256, path, width, height, nbytes,"
                " content_type, attempts, transient FROM downloads WHERE url = ?",
                (url,),
            ).fetchone()
        if row is None:
            return None
        return DownloadRecord(row[0], bool(row[1]), row[2], row[3] or "", *row[4:12], bool(row[12]))

    def record_download(self, record: DownloadRecord) -> None:
        values = asdict(record)
        values.pop("run")
        values["ok"] = int(record.ok)
        values["transient"] = int(record.transient)
        values["updated_at"] = time.time()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO downloads ({columns}) VALUES ({marks})", tuple(values.values())
            )

    def download_counts(self) -> dict[str, int]:
        """Downloads by outcome: ``ok`` and each failure reason."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT CASE WHEN ok THEN 'ok' ELSE reason END, COUNT(*) FROM downloads GROUP BY 1"
            ).fetchall()
        return {str(reason): int(count) for reason, count in rows}

    # -- posts --------------------------------------------------------------------------------------

    def post(self, record_id: str) -> tuple[WebPost, str, str | None] | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT post_json, status, reason FROM posts WHERE record_id = ?", (record_id,)
            ).fetchone()
        if row is None:
            return None
        return WebPost.from_json(json.loads(row[0])), row[1], row[2]

    def record_post(
        self, post: WebPost, status: str, reason: str | None = None, at: float | None = None
    ) -> None:
        """What became of ``post`` at ``at`` (now by default); an older outcome never replaces a newer."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO posts (record_id, post_json, status, reason, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(record_id) DO UPDATE SET post_json = excluded.post_json,"
                " status = excluded.status, reason = excluded.reason, updated_at = excluded.updated_at"
                " WHERE excluded.updated_at >= posts.updated_at",
                (
                    post.record_id,
                    json.dumps(post.to_json()),
                    status,
                    reason,
                    time.time() if at is None else at,
                ),
            )

    def record_outcomes(self, outcomes: Iterable[PostOutcome]) -> int:
        """Record what the workers report of their posts and downloads; returns how many posts."""
        n = 0
        for outcome in outcomes:
            self.record_post(outcome.post, outcome.status, outcome.reason, outcome.at)
            for record in outcome.downloads:
                self.record_download(record)
            n += 1
        return n

    def post_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT status, COUNT(*) FROM posts GROUP BY status").fetchall()
        return {str(status): int(count) for status, count in rows}

    def post_ids(self, status: str) -> set[str]:
        """The record ids of the posts whose last outcome is ``status``."""
        with self._lock:
            rows = self._conn.execute("SELECT record_id FROM posts WHERE status = ?", (status,)).fetchall()
        return {str(record_id) for (record_id,) in rows}

    def deferred_reasons(self) -> dict[str, int]:
        """Posts now waiting for the next run (a transient failure), by reason."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT reason, COUNT(*) FROM posts WHERE status = 'deferred' GROUP BY reason"
            ).fetchall()
        return {str(reason): int(count) for reason, count in rows}
