"""Counts of what the crawl did, per unit of work: the posts, downloads and requests of one batch.

One crawl (fetcher, downloader, crawler and their threads) serves every batch a process runs, several
at once; a batch's counts are still its own. :func:`counting` makes a :class:`Tally` current for the
calling thread (a context variable), :func:`count` adds to the current one (nothing when none is), and
:func:`carry` hands the current one to a task submitted to a thread pool. The stage returns each batch's
tally with its samples, and the runner sums them into the stage's summary.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

_CURRENT: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("ieiw_web_tally", default=None)


class Tally:
    """A thread-safe counter of named events."""

    def __init__(self) -> None:
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    @property
    def counts(self) -> Counter:
        with self._lock:
            return Counter(self._counts)


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to ``name`` in the calling thread's current tally, if there is one."""
    tally = _CURRENT.get()
    if tally is not None:
        tally.add(name, n)


@contextlib.contextmanager
def counting(tally: Tally | None = None) -> Iterator[Tally]:
    """Make ``tally`` (a new one by default) current in this thread for the block."""
    tally = tally if tally is not None else Tally()
    token = _CURRENT.set(tally)
    try:
        yield tally
    finally:
        _CURRENT.reset(token)


def carry(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` to run in another thread with the calling thread's current tally."""
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(fn, *args, **kwargs)
