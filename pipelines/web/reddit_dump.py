"""Reddit offline: zstandard-compressed NDJSON dumps of submissions and comments (the public archives).

Memory stays bounded however large the dumps are: one streaming pass indexes the wanted submissions
into a small SQLite file, a second streams the comments and keeps the top-level ones with links of
those submissions (and which ones the requester answered), then posts are read back in order.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import zstandard

from ieiw.pipelines.web.config import DumpSourceConfig
from ieiw.pipelines.web.posts import PostSource, WebPost
from ieiw.pipelines.web.reddit_things import candidates_from_comments, comment_links, post_from_submission

log = logging.getLogger(__name__)
MAX_WINDOW = 2**31  # the archives are compressed with a long window


def open_ndjson(path: str) -> IO[str]:
    """A text stream of a ``.zst`` (or plain) NDJSON file."""
    raw = open(path, "rb")  # noqa: SIM115 (the caller closes the wrapper, which closes it)
    if path.endswith(".zst"):
        reader = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(
            raw, read_across_frames=True, closefd=True
        )
        return io.TextIOWrapper(io.BufferedReader(reader), encoding="utf-8", errors="replace")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")


def iter_objects(path: str, counters: dict[str, int]) -> Iterator[dict[str, Any]]:
    """JSON objects of an NDJSON file; malformed lines are counted in ``counters['bad_lines']``."""
    with open_ndjson(path) as stream:
        for line in stream:
            line = line.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                counters["bad_lines"] = counters.get("bad_lines", 0) + 1
                continue
            if isinstance(value, dict):
                yield value


def _bare_id(fullname: str | None) -> str:
    return str(fullname or "").split("_", 1)[-1]


class RedditDumpSource(PostSource):
    """Posts of the configured subreddits from submission and comment dumps."""

    name = "reddit_dump"

    def __init__(self, config: DumpSourceConfig, skip_authors: list[str]) -> None:
        self.config = config
        self.skip_authors = skip_authors
        self.subreddits = {s.lower() for s in config.subreddits}
        self.counters: dict[str, int] = {}

    def iter_posts(self) -> Iterator[WebPost]:
        folder = self.config.index_dir or tempfile.mkdtemp(prefix="ieiw-dump-index-")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "dump_index.sqlite")
        if os.path.exists(path):
            os.remove(path)  # rebuilt each run: the dumps may have changed
        db = sqlite3.connect(path)
        try:
            db.executescript(
                "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
                "CREATE TABLE posts (seq INTEGER PRIMARY KEY, id TEXT UNIQUE, author TEXT, json TEXT);"
                "CREATE TABLE comments (link_id TEXT, id TEXT, json TEXT);"
                "CREATE TABLE op_replies (comment_id TEXT PRIMARY KEY);"
            )
            self._index_submissions(db)
            self._index_comments(db)
            db.execute("CREATE INDEX comments_link ON comments (link_id)")
            yield from self._read_back(db)
        finally:
            db.close()
            os.remove(path)

    def _wanted(self, data: dict[str, Any]) -> bool:
        return str(data.get("subreddit") or "").lower() in self.subreddits

    def _index_submissions(self, db: sqlite3.Connection) -> None:
        for path in self.config.submissions:
            for data in iter_objects(path, self.counters):
                if not self._wanted(data) or not data.get("id"):
                    continue
                db.execute(
                    "INSERT OR REPLACE INTO posts (id, author, json) VALUES (?, ?, ?)",
                    (str(data["id"]), str(data.get("author") or ""), json.dumps(data)),
                )
        db.commit()

    def _index_comments(self, db: sqlite3.Connection) -> None:
        for path in self.config.comments:
            for data in iter_objects(path, self.counters):
                if not self._wanted(data) or not data.get("id"):
                    continue
                link = _bare_id(data.get("link_id"))
                row = db.execute("SELECT author FROM posts WHERE id = ?", (link,)).fetchone()
                if row is None:
                    continue
                parent = str(data.get("parent_id") or "")
                if parent.startswith("t3_"):
                    if comment_links(data):  # every link is accounted for, images or not
                        db.execute(
                            "INSERT INTO comments (link_id, id, json) VALUES (?, ?, ?)",
                            (link, str(data["id"]), json.dumps(data)),
                        )
                elif parent.startswith("t1_") and data.get("author") == row[0]:
                    db.execute(
                        "INSERT OR IGNORE INTO op_replies (comment_id) VALUES (?)", (_bare_id(parent),)
                    )
        db.commit()

    def _read_back(self, db: sqlite3.Connection) -> Iterator[WebPost]:
        cursor = db.execute("SELECT id, author, json FROM posts ORDER BY seq")
        while rows := cursor.fetchmany(256):
            for post_id, author, raw in rows:
                post = post_from_submission(json.loads(raw))
                rows_of_post = db.execute(
                    "SELECT c.json, r.comment_id FROM comments c"
                    " LEFT JOIN op_replies r ON r.comment_id = c.id WHERE c.link_id = ? ORDER BY c.rowid",
                    (post_id,),
                ).fetchall()
                comments = [json.loads(raw_comment) for raw_comment, _ in rows_of_post]
                replied = {str(reply) for _, reply in rows_of_post if reply is not None}
                post.candidates = candidates_from_comments(comments, author, self.skip_authors, replied)
                yield post
