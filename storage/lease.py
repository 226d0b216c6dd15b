"""One writer per stage at a time: a lease file in the stage folder, renewed while its holder works.

The lease is ``<stage>/.lease.json``: who holds it (a random holder id, the host, the process, and the
Prefect flow run when there is one) and until when. It is created exclusively (``O_EXCL`` locally, a
conditional PUT on S3). A holder renews it in the background; it is stale when it has expired, or when
its holder was a process on this host that no longer runs (a run killed with SIGKILL frees its stage
at once on the same machine, and after ``ttl`` seconds elsewhere). Only the holder cleans temporary
files and prunes what was never committed; workers of the holder's run check that the lease is still
theirs before each commit.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from ieiw.storage import fs

LEASE_FILE = ".lease.json"
DEFAULT_TTL = 120.0


class StageBusy(RuntimeError):
    """Another run holds the stage's lease."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it expired while the run was stalled)."""


@dataclass
class LeaseRecord:
    holder: str
    host: str
    pid: int
    expires: float
    acquired: float
    run: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        return cls(**json.loads(data))

    def describe(self) -> str:
        run = f" (flow run {self.run})" if self.run else ""
        held = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.acquired))
        return f"process {self.pid} on {self.host}{run}, since {held}"


def lease_url(stage_url: str) -> str:
    return fs.join(stage_url, LEASE_FILE)


def read_lease(stage_url: str) -> LeaseRecord | None:
    try:
        return LeaseRecord.from_bytes(fs.read_bytes(lease_url(stage_url)))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError):
        return None  # a torn or foreign file: treated as no lease, replaced on acquisition


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


# Holders this process has open: a lease naming this process but another holder was left by a writer of
# ours that ended without removing it (the store failed at that moment), so it is stale.
_ACTIVE_HOLDERS: set[str] = set()


def is_stale(record: LeaseRecord, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if record.expires < now:
        return True
    if record.host != socket.gethostname():
        return False
    if record.pid == os.getpid():
        return record.holder not in _ACTIVE_HOLDERS
    return not _process_alive(record.pid)


class StageLease:
    """The lease of one stage folder. Use as a context manager, or :meth:`acquire` / :meth:`release`."""

    def __init__(
        self,
        stage_url: str,
        stage: str,
        ttl: float = DEFAULT_TTL,
        wait_seconds: float = 0.0,
        run: str = "",
    ) -> None:
        self.stage_url = stage_url
        self.stage = stage
        self.ttl = ttl
        self.wait_seconds = wait_seconds
        self.record = LeaseRecord(
            holder=uuid.uuid4().hex,
            host=socket.gethostname(),
            pid=os.getpid(),
            expires=0.0,
            acquired=0.0,
            run=run,
        )
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def holder(self) -> str:
        return self.record.holder

    def acquire(self) -> StageLease:
        deadline = time.monotonic() + self.wait_seconds
        url = lease_url(self.stage_url)
        while True:
            now = time.time()
            self.record.acquired, self.record.expires = now, now + self.ttl
            if fs.create_exclusive(url, self.record.to_bytes()):
                break
            current = read_lease(self.stage_url)
            if current is None or is_stale(current):
                self._take_over(current)
                continue
            if time.monotonic() >= deadline:
                raise StageBusy(
                    f"stage {self.stage} at {self.stage_url} is being written by another run: "
                    f"{current.describe()}. Wait for it to finish (or stop it); a killed run's lease "
                    f"frees at once on the same machine and within {self.ttl:.0f}s elsewhere."
                )
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        if read_lease(self.stage_url) != self.record:
            raise StageBusy(
                f"stage {self.stage} at {self.stage_url}: another run took the lease at the same time"
            )
        _ACTIVE_HOLDERS.add(self.holder)
        self._renewer = threading.Thread(target=self._renew_loop, name=f"lease-{self.stage}", daemon=True)
        self._renewer.start()
        return self

    def _take_over(self, stale: LeaseRecord | None) -> None:
        """Remove a stale lease, unless it changed since it was read (someone else took it over)."""
        again = read_lease(self.stage_url)
        if again == stale:
            fs.remove(lease_url(self.stage_url))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with contextlib.suppress(OSError, LeaseLost):
                self.renew()

    def renew(self) -> None:
        self.check()
        self.record.expires = time.time() + self.ttl
        fs.write_bytes_atomic(lease_url(self.stage_url), self.record.to_bytes())

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is no longer this holder's."""
        check_holder(self.stage_url, self.stage, self.holder)

    def release(self) -> None:
        _ACTIVE_HOLDERS.discard(self.holder)
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        current = read_lease(self.stage_url)
        if current is not None and current.holder == self.holder:
            fs.remove(lease_url(self.stage_url))

    def __enter__(self) -> StageLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_holder(stage_url: str, stage: str, holder: str | None) -> None:
    """Raise :class:`LeaseLost` unless ``holder`` holds the stage's lease (``None`` skips the check)."""
    if holder is None:
        return
    current = read_lease(stage_url)
    if current is None or current.holder != holder:
        who = current.describe() if current else "nobody"
        raise LeaseLost(f"stage {stage} at {stage_url}: this run no longer holds the lease (now: {who})")
