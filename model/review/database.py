"""The engine and sessions behind a review's store: a SQLite file by default, PostgreSQL by URL.

Concurrency: every write is one short transaction (``BEGIN IMMEDIATE`` on SQLite, so writers
queue instead of failing on a lock upgrade; within one process they also queue on a lock, which
is fairer and faster than SQLite's sleeping busy handler). A write that loses a race to another
(a unique constraint or a lock) runs again through :meth:`ReviewDatabase._retrying`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from ieiw.model.review.tables import Base

DEFAULT_URL = "sqlite:///ieiw-review.sqlite"
WRITE_ATTEMPTS = 5


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout, foreign keys and immediate writes."""
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True)
    engine = create_engine(
        url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=10, max_overflow=40
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # transactions begin in _begin below
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        write = connection.get_execution_options().get("review_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


class ReviewDatabase:
    """A review's database connection. Thread-safe: each call opens its own short session."""

    def __init__(self, url: str = DEFAULT_URL, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._writer = self.engine.execution_options(review_write=True)
        self._write_lock = threading.Lock() if self.engine.dialect.name == "sqlite" else nullcontext()
        if create:
            Base.metadata.create_all(self.engine)

    @property
    def display_url(self) -> str:
        """The URL with its password hidden, for logs and pages."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine) as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._write_lock, Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    def _retrying(self, operation):
        """Run a write transaction again when a concurrent one won a unique constraint or a lock."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._write() as session:
                    return operation(session)
            except (IntegrityError, OperationalError):
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")
