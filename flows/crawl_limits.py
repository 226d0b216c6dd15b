"""Crawl limits for the whole build: Prefect global concurrency limits, two per host.

A build's batches may run in many processes on many machines (a Dask cluster); limits each process
kept for itself would multiply by their number. With :class:`PrefectLimits` every request to a host
holds a slot of the host's global concurrency limit ``ieiw-crawl:<host>`` (``per_host_concurrency``
slots) from before its first byte is sent to its body's last byte, and, where a rate is set, starts
only while its process holds the host's start gate ``ieiw-crawl-rate:<host>`` (a limit of one slot):
the holder paces its starts at ``per_host_requests_per_second`` and gives the gate back no sooner than
one interval after its last start, so two starts to a host, whoever makes them, are an interval apart.
The limits live on the Prefect server the flow runs against: the lead creates or updates those of the
hosts it knows before any batch runs (:meth:`PrefectLimits.prepare`), a process those of a host it
meets first. A robots.txt ``Crawl-delay`` slower than the rate widens the interval (every process reads
robots.txt before its first request to a host). A ``Retry-After`` pauses the host in the process that
got it.

Why not ``concurrency()`` and ``rate_limit()`` per request: taking a slot with
:func:`prefect.concurrency.sync.concurrency` costs several calls to the server (acquire, lease renewal,
release, events: 100 to 250 ms measured on a local SQLite server), far too slow to pay per request, and
a Prefect rate limit (a slot that decays) delivers far less than its rate once several processes ask
for it: the server restarts the decay on every refusal (measured: 3 of 5 starts per second for two
processes asking, 1 of 5 in the two-worker crawl test). So each process holds the slots it uses for a
while: a holder thread takes slots from the limit with a lease (the server calls ``concurrency()``
makes: increment with a lease, renew, decrement) and lends them to the process's requests, one request
per slot at a time, until none has wanted them for ``linger_seconds``, then gives them back. A process
never lends more slots than it holds, so the requests in flight to a host, summed over every process
and machine, never exceed the limit; a request through a slot its process holds costs microseconds. A
holder that dies with its process leaves its slots taken until their lease runs out (``lease_seconds``,
at least 60 s); the server then frees them.

These run in the flow's process and in every worker (the stage carries the factory); nothing in
``pipelines/`` imports Prefect: it sees a :class:`~ieiw.pipelines.web.limits.HostLimits`.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.context import SettingsContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from ieiw.flows.config import RunnerConfig
from ieiw.pipelines.web.config import DownloadConfig
from ieiw.pipelines.web.limits import HostLimiter, LimitsFactory, ProcessLimits

log = logging.getLogger(__name__)
CONCURRENCY = "ieiw-crawl"
RATE = "ieiw-crawl-rate"
_BANNED = re.compile(r"[/%&<>]")  # characters Prefect refuses in a limit's name


def limit_names(host: str) -> tuple[str, str]:
    """The names of a host's concurrency limit and of its start gate (its rate)."""
    safe = _BANNED.sub("_", host)
    return f"{CONCURRENCY}:{safe}", f"{RATE}:{safe}"


class LimitUnavailable(RuntimeError):
    """A host's global limit could not be taken (the Prefect server did not answer, or refused)."""


def _upsert(client, name: str, limit: int, decay: float | None = None) -> None:
    """Create or update a global limit (another process may create it at the same moment)."""
    for attempt in range(3):
        try:
            client.upsert_global_concurrency_limit_by_name(name, limit, slot_decay_per_second=decay)
            return
        except (ObjectAlreadyExists, ObjectNotFound):
            if attempt == 2:
                raise


def server_url() -> str:
    """The Prefect API the limits live on; without one each process would start a server of its own
    (Prefect's ephemeral mode) and the limits would hold per process again."""
    url = SettingsContext.get().settings.api.url
    if not url:
        raise LimitUnavailable(
            "crawl limits for the whole build need a Prefect server: set PREFECT_API_URL "
            "(ieiw build and ieiw crawl start one), or set web_edits.download.limits: process"
        )
    return str(url)


def ensure_limits(host: str, concurrency_limit: int, requests_per_second: float) -> None:
    """Create or update ``host``'s limits on the Prefect server with these values: its concurrency
    limit, and where a rate is set its start gate (a limit of one slot)."""
    server_url()
    name = limit_names(host)[0]
    with get_client(sync_client=True) as client:
        _upsert(client, name, max(1, concurrency_limit))
    if requests_per_second > 0:
        ensure_gate(host)


def ensure_gate(host: str) -> None:
    """The host's start gate: one slot, held by the process that starts requests to it now."""
    with get_client(sync_client=True) as client:
        _upsert(client, limit_names(host)[1], 1, 0.0)


def _retry_after(error: httpx.HTTPStatusError) -> float:
    try:
        return max(0.0, float(error.response.headers["Retry-After"]))
    except (KeyError, TypeError, ValueError):
        return 1.0


class _HostSlots:
    """This process's share of one host's global slots, lent to its requests one at a time.

    Holder threads take slots from the server's concurrency limit with a lease (Prefect's
    ``increment-with-lease``, ``renew``, ``decrement-with-lease`` calls: what
    :func:`prefect.concurrency.sync.concurrency` does, less its per-process queue of acquisitions that
    sleeps through every refusal), up to ``chunk`` slots at a time (a process starting on a host asks the
    server a few times, not once per slot), and give them back a holder's worth at a time, so a process
    never sits on many more slots than it uses while others wait. When the server has none free, one
    holder of the process asks again every ``poll`` seconds (not the server's Retry-After, which grows
    with how long slots are held) while the process still wants a slot."""

    def __init__(
        self, name: str, limit: int, linger: float, lease: float, poll: float, spacing: float = 0.0
    ) -> None:
        self.name, self.limit, self.linger, self.lease, self.poll = name, max(1, limit), linger, lease, poll
        self.spacing = spacing  # given back no sooner than this long after its last use (a gate)
        self.last_use = 0.0
        self.chunk = max(1, -(-self.limit // 4))
        lock = threading.Lock()
        self.available = threading.Condition(lock)  # requests wait here for a slot
        self.changed = threading.Condition(lock)  # holders wait here (and look every ``linger``)
        self.asking = threading.Lock()  # the server's database takes one ask after another anyway
        self.client: Any = None
        self.held = 0  # global slots held by this process's holders
        self.lent = 0  # of those, lent to a request now
        self.pending = 0  # slots asked of the server, not granted yet
        self.waiting = 0  # requests waiting for a slot
        self.releasing = 0  # slots given back here, not yet on the server (still counted there)
        self.refused = False  # the server had no free slot at the last ask: one holder keeps asking
        self.flush = False  # give back idle slots now, without lingering
        self.error: BaseException | None = None
        self.acquired = 0  # how many times slots were taken from the server (for the bench)

    @contextmanager
    def borrow(self) -> Iterator[None]:
        with self.available:
            self.waiting += 1
            try:
                while self.lent >= self.held:
                    if self.error is not None and self.pending == 0:
                        error, self.error = self.error, None
                        raise LimitUnavailable(f"{self.name}: {error}") from error
                    wanted = self.waiting - (self.held - self.lent) - self.pending
                    room = self.limit - self.held - self.pending - self.releasing  # as the server counts
                    if wanted > 0 and room > 0 and not (self.refused and self.pending):
                        # ask for more, up to as many as this process has (doubling while it waits)
                        self._start_holder(min(max(wanted, self.held + self.pending), room, self.chunk))
                    self.available.wait(1.0)
            finally:
                self.waiting -= 1
            self.lent += 1
            self.flush = False
        try:
            yield
        finally:
            with self.available:
                self.lent -= 1
                self.last_use = time.monotonic()
                if self.waiting:
                    self.available.notify()

    def give_back_idle(self) -> None:
        with self.changed:
            self.flush = True
            self.changed.notify_all()

    def busy(self) -> bool:
        """Slots of this process still held or on their way back to the server."""
        with self.available:
            return bool(self.held or self.releasing or self.pending)

    def _start_holder(self, slots: int) -> None:
        """A holder thread with the asking thread's Prefect settings (its API URL) and nothing else of its
        context: a holder outlives the task run that asked, and that run's client closes with it."""
        self.pending += slots
        settings = SettingsContext.get()
        threading.Thread(
            target=contextvars.Context().run,
            args=(self._hold_with, slots, settings.profile, settings.settings),
            name=f"hold {self.name}",
            daemon=True,
        ).start()

    def _hold_with(self, slots: int, profile: Any, settings: Any) -> None:
        with SettingsContext(profile=profile, settings=settings):
            self._hold(slots)

    def _hold(self, slots: int) -> None:
        """Take ``slots`` slots from the server, lend them while they are wanted, give them back."""
        asked, granted = slots, 0  # slots counted as pending for this holder; granted by the server
        try:
            client = self._client()
            while asked:
                try:
                    with self.asking:  # one ask at a time per process, as Prefect's own queue does
                        response = client.increment_concurrency_slots_with_lease(
                            names=[self.name], slots=asked, mode="concurrency", lease_duration=self.lease
                        )
                except httpx.HTTPStatusError as error:
                    if error.response.status_code != 423:
                        raise
                    asked = self._refused(asked)
                    if asked:
                        time.sleep(min(_retry_after(error), self.poll))
                    continue
                answer = response.json()
                if not answer.get("limits"):
                    raise LimitUnavailable(f"{self.name}: no such limit on the Prefect server")
                lease, granted = UUID(answer["lease_id"]), asked
                try:
                    self._lend(asked, partial(client.renew_concurrency_lease, lease, self.lease))
                finally:
                    _release(client, lease, self.name)
                return
        except BaseException as error:  # the server failed or went away
            with self.available:
                if not granted:
                    self.pending -= asked
                    self.error = error
                self.available.notify_all()
        finally:
            with self.available:
                if granted:
                    self.releasing -= granted  # given back on the server too
                self.available.notify()

    def _client(self) -> Any:
        """The process's client for this host's slots, opened by the first holder (with its settings)
        and kept: opening one costs about as much as taking a slot."""
        with self.asking:
            if self.client is None:
                self.client = get_client(sync_client=True).__enter__()
            return self.client

    def _refused(self, asked: int) -> int:
        """The server had no free slot: ask again for one, if this process still wants it."""
        with self.available:
            self.refused = True
            self.pending -= asked - 1
            if self.waiting > (self.held - self.lent) + (self.pending - 1):
                return 1
            self.pending -= 1
            self.available.notify()  # a request that still waits starts the next holder
            return 0

    def _lend(self, slots: int, renew: Any) -> None:
        """While this holder's slots are taken on the server: count them as this process's to lend
        until they have been idle for ``linger`` (or the process gives idle slots back), renewing the
        lease as it runs out."""
        renew_at = time.monotonic() + 0.75 * self.lease
        with self.changed:
            self.pending -= slots
            self.held += slots
            self.acquired += 1
            self.refused = False
            self.available.notify(slots)
            try:
                idle_since: float | None = None
                while True:
                    now = time.monotonic()
                    if self.waiting or self.held - self.lent < slots:
                        idle_since = None
                    else:
                        idle_since = now if idle_since is None else idle_since
                        spaced = now >= self.last_use + self.spacing  # a gate: the next start elsewhere
                        if spaced and (self.flush or now - idle_since >= self.linger):  # is an interval on
                            return
                    if now >= renew_at:
                        self.changed.release()
                        try:
                            renew()
                        except Exception:  # noqa: BLE001 (the lease may be gone: lend these no more)
                            log.warning("%s: a lease could not be renewed; its slots are given up", self.name)
                            return
                        finally:
                            self.changed.acquire()
                        renew_at = time.monotonic() + 0.75 * self.lease
                    self.changed.wait(self.linger)
            finally:
                # given back idle (no request holds them), or lost: lent no more from now
                self.held -= slots
                self.releasing += slots
                self.available.notify_all()


def _release(client: Any, lease: UUID, name: str) -> None:
    try:
        client.release_concurrency_slots_with_lease(lease)
    except Exception:  # noqa: BLE001 (the server frees them when the lease runs out)
        log.warning("%s: slots could not be given back; the server frees them when their lease ends", name)


class PrefectHostLimits:
    """A process's limiter over the build's global limits (one per process and set of limits).

    A request holds one of its host's concurrency slots from before it is sent to its body's last byte.
    Where a rate is set it then passes the host's start gate: the gate is the one slot of the host's
    rate limit, and only the process holding it starts requests to that host, paced at the rate; it
    gives the gate back no sooner than one interval after its last start, so the starts of every
    process are an interval apart."""

    def __init__(self, factory: PrefectLimits, concurrency_limit: int, requests_per_second: float) -> None:
        self.factory = factory
        self.concurrency = max(1, concurrency_limit)
        self.requests_per_second = requests_per_second
        # the pacing of this process's starts while it holds a host's gate, and its Retry-After pauses
        self._local = HostLimiter(self.concurrency, requests_per_second)
        self._slots: dict[str, _HostSlots] = {}
        self._gates: dict[str, _HostSlots] = {}
        self._ensuring: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _new_slots(self, name: str, limit: int, spacing: float = 0.0) -> _HostSlots:
        """A host's slots; a gate (``spacing``: its interval) lingers and polls one interval at most: held
        idle any longer it only keeps other processes from starting."""
        factory = self.factory
        linger, poll = factory.linger_seconds, factory.poll_seconds
        if spacing:
            floor = max(spacing, 0.02)  # a holder looks no more often than this
            linger, poll = min(linger, floor), min(poll, floor)
        return _HostSlots(name, limit, linger, factory.lease_seconds, poll, spacing)

    def _host(self, host: str) -> tuple[_HostSlots, _HostSlots | None]:
        """The host's slots and start gate; its limits are made sure of on the server first (once per
        process)."""
        with self._guard:
            slots = self._slots.get(host)
            if slots is not None:
                return slots, self._gates.get(host)
            lock = self._ensuring.setdefault(host, threading.Lock())
        with lock:
            with self._guard:
                slots = self._slots.get(host)
            if slots is None:
                ensure_limits(host, self.concurrency, self.requests_per_second)
                name, rate = limit_names(host)
                slots = self._new_slots(name, self.concurrency)
                with self._guard:
                    if self.requests_per_second > 0:
                        self._gates[host] = self._new_slots(rate, 1, 1.0 / self.requests_per_second)
                    self._slots[host] = slots
            with self._guard:
                return slots, self._gates.get(host)

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        slots, gate = self._host(host)
        with slots.borrow():
            if gate is None:
                self._local.wait_turn(host)  # a Retry-After pause, if any
            else:
                with gate.borrow():  # this process holds the host's gate: it starts at its pace
                    self._local.wait_turn(host)
            yield

    def defer(self, host: str, seconds: float) -> None:
        self._local.defer(host, seconds)

    def slow_down(self, host: str, interval: float) -> None:
        """A robots.txt Crawl-delay: at least ``interval`` between two starts to the host, whoever starts
        them (every process reads robots.txt before its first request to a host)."""
        if interval <= 0:
            return
        self._host(host)
        self._local.slow_down(host, interval)
        with self._guard:
            gate = self._gates.get(host)
            if gate is None:
                self._gates[host] = gate = self._new_slots(limit_names(host)[1], 1, interval)
        gate.spacing = max(gate.spacing, interval)
        ensure_gate(host)

    def close(self) -> None:
        """Give back the slots nobody uses now (the limiter stays usable: other crawls share it)."""
        for host_slots in self._all():
            host_slots.give_back_idle()

    def _all(self) -> list[_HostSlots]:
        with self._guard:
            return [*self._slots.values(), *self._gates.values()]

    def busy(self) -> bool:
        """Slots of this process still held, asked for, or on their way back to the server."""
        return any(s.busy() for s in self._all())

    def held(self) -> dict[str, int]:
        """Global slots this process holds now, by limit name."""
        return {s.name: s.held for s in self._all()}

    def acquisitions(self) -> int:
        """How many times this process took slots from the server."""
        return sum(s.acquired for s in self._all())


_LIMITERS: dict[tuple[PrefectLimits, int, float], PrefectHostLimits] = {}
_LIMITERS_GUARD = threading.Lock()


@dataclass(frozen=True)
class PrefectLimits:
    """Makes a process's :class:`PrefectHostLimits` (every fetcher of a process shares it): the
    factory a stage carries to its workers when the build's limits are Prefect's."""

    linger_seconds: float = 0.5  # a slot nobody wanted this long goes back to the server
    lease_seconds: float = 60.0  # the server's shortest lease: a dead process's slots free after it
    poll_seconds: float = 0.25  # how soon a refused process asks again for a slot

    def __call__(self, config: DownloadConfig) -> PrefectHostLimits:
        key = (self, config.per_host_concurrency, config.per_host_requests_per_second)
        with _LIMITERS_GUARD:
            limiter = _LIMITERS.get(key)
            if limiter is None:
                limiter = _LIMITERS[key] = PrefectHostLimits(self, *key[1:])
            return limiter

    def prepare(self, config: DownloadConfig, hosts: Iterable[str]) -> None:
        for host in hosts:
            ensure_limits(host, config.per_host_concurrency, config.per_host_requests_per_second)

    def describe(self) -> str:
        return "prefect"


def crawl_limits(download: DownloadConfig, runner: RunnerConfig | None = None) -> LimitsFactory:
    """The limits a crawl's requests go through: Prefect's global ones when they must hold across
    processes (``download.limits: build``, or ``auto`` with batches on Dask), else the process's own."""
    scope = download.limits
    if scope == "auto":
        scope = "build" if runner is not None and runner.task_runner == "dask" else "process"
    return PrefectLimits() if scope == "build" else ProcessLimits()


@atexit.register
def _give_back_at_exit() -> None:
    """Slots held when the process exits are given back now, not after their leases expire."""
    with _LIMITERS_GUARD:
        limiters = list(_LIMITERS.values())
    for limiter in limiters:
        limiter.close()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(limiter.busy() for limiter in limiters):
        time.sleep(0.05)
