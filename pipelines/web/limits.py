"""Per-host politeness: at most N requests at once and a minimum interval between request starts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class _Host:
    slots: threading.BoundedSemaphore
    interval: float
    next_start: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class HostLimiter:
    """Bounds concurrency and rate per host; a server's ``Retry-After`` pauses that host for everyone."""

    def __init__(self, concurrency: int, requests_per_second: float) -> None:
        self.concurrency = max(1, concurrency)
        self.interval = 1.0 / requests_per_second if requests_per_second > 0 else 0.0
        self._hosts: dict[str, _Host] = {}
        self._guard = threading.Lock()

    def _host(self, host: str) -> _Host:
        with self._guard:
            state = self._hosts.get(host)
            if state is None:
                state = self._hosts[host] = _Host(threading.BoundedSemaphore(self.concurrency), self.interval)
            return state

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """Hold one of the host's request slots, starting no sooner than its rate allows."""
        state = self._host(host)
        with state.slots:
            while True:
                with state.lock:
                    now = time.monotonic()
                    wait = state.next_start - now
                    if wait <= 0:
                        state.next_start = now + state.interval
                        break
                time.sleep(min(wait, 1.0))
            yield

    def defer(self, host: str, seconds: float) -> None:
        """No new request to ``host`` for ``seconds`` (a 429/503 with Retry-After)."""
        state = self._host(host)
        with state.lock:
            state.next_start = max(state.next_start, time.monotonic() + seconds)

    def slow_down(self, host: str, interval: float) -> None:
        """Raise the host's minimum interval (robots.txt ``Crawl-delay``)."""
        state = self._host(host)
        with state.lock:
            state.interval = max(state.interval, interval)
