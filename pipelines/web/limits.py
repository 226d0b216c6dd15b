"""Per-host politeness: at most N requests at once and a minimum interval between request starts.

Every request of the crawler, from its first byte sent to its last byte read, holds one of its host's
slots (:meth:`HostLimits.slot`). Where the limits hold is the limiter's business:

- :class:`HostLimiter`, the limits of one process (its threads): plain Python, tests, a build whose
  batches all run in the flow's process;
- a limiter shared by every process and machine of a build (Prefect's global concurrency and rate
  limits, in ``ieiw.flows.crawl_limits``): this layer never imports Prefect, it is handed one.

Stage objects travel to worker processes, so they carry a :class:`LimitsFactory` (small, picklable),
and each process builds its limiter from it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from ieiw.pipelines.web.config import DownloadConfig


def limit_host(url: str) -> str:
    """The host a request counts against: its name, and its port where one is written (the scheme
    does not matter: http and https of one server are one server to be polite to)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


class HostLimits(Protocol):
    """What the fetcher needs of a limiter."""

    def slot(self, host: str) -> AbstractContextManager[None]:
        """Held for one request to ``host``, body included; entered no sooner than its rate allows."""
        ...

    def defer(self, host: str, seconds: float) -> None:
        """No new request to ``host`` for ``seconds`` (a 429/503 with Retry-After)."""
        ...

    def slow_down(self, host: str, interval: float) -> None:
        """At least ``interval`` seconds between request starts to ``host`` (robots.txt Crawl-delay)."""
        ...

    def close(self) -> None: ...


class LimitsFactory(Protocol):
    """Makes a process's limiter; picklable, so that it travels with the stage to every worker."""

    def __call__(self, config: DownloadConfig) -> HostLimits: ...

    def prepare(self, config: DownloadConfig, hosts: Iterable[str]) -> None:
        """Before any batch runs (in the flow's process): set up the limits of the hosts known now."""
        ...

    def describe(self) -> str: ...


@dataclass
class _Host:
    slots: threading.BoundedSemaphore
    interval: float
    next_start: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class HostLimiter:
    """Bounds concurrency and rate per host in this process; a ``Retry-After`` pauses that host for
    every thread of the process."""

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
            self.wait_turn(host)
            yield

    def wait_turn(self, host: str) -> None:
        """Wait until the host's interval since the last start (and any deferral) has passed."""
        state = self._host(host)
        while True:
            with state.lock:
                now = time.monotonic()
                wait = state.next_start - now
                if wait <= 0:
                    state.next_start = now + state.interval
                    return
            time.sleep(min(wait, 1.0))

    def defer(self, host: str, seconds: float) -> None:
        state = self._host(host)
        with state.lock:
            state.next_start = max(state.next_start, time.monotonic() + seconds)

    def slow_down(self, host: str, interval: float) -> None:
        state = self._host(host)
        with state.lock:
            state.interval = max(state.interval, interval)

    def close(self) -> None:
        pass


_PROCESS: dict[tuple[int, float], HostLimiter] = {}
_PROCESS_GUARD = threading.Lock()


@dataclass(frozen=True)
class ProcessLimits:
    """The limits of one process (:class:`HostLimiter`): every fetcher of the process with the same
    limits shares one limiter (the lead's listing and a batch's downloads alike); nothing to set up."""

    def __call__(self, config: DownloadConfig) -> HostLimiter:
        key = (config.per_host_concurrency, config.per_host_requests_per_second)
        with _PROCESS_GUARD:
            limiter = _PROCESS.get(key)
            if limiter is None:
                limiter = _PROCESS[key] = HostLimiter(*key)
            return limiter

    def prepare(self, config: DownloadConfig, hosts: Iterable[str]) -> None:
        pass

    def describe(self) -> str:
        return "process"
