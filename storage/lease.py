"""One writer per stage at a time: a lease file in the stage folder, renewed while its holder works.

The lease is ``<stage>/.lease.json``: who holds it (a random holder token, the host, the process, the
machine's boot id and the process's pid namespace, and the Prefect flow run when there is one) and until
when. It is created exclusively (``O_EXCL`` locally, a conditional PUT on S3).

**Liveness.** A lease is stale when it has expired. Before that it is judged dead early only when its
holder's process can be seen from here: the same boot id and the same pid namespace, and that pid no
longer runs (a run killed with SIGKILL frees its stage at once). A host name and a pid alone prove
nothing: containers share host names (host networking) but not pid namespaces, so a lease from another
container, machine or boot is left to its ttl.

**Fencing.** Every change of the lease and every commit is fenced by the holder's token, so a run whose
lease was taken over can neither renew nor commit:

- local folders: the change or the commit happens under an exclusive lock of ``<stage>/.lease.lock``
  (``flock``), after checking the holder under that same lock, and a takeover takes the same lock;
- object stores with conditional writes (S3): a renewal is a PUT conditional on the ETag it read
  (``If-Match``); a commit checks the holder and that the lease it renewed has not expired, so a holder
  that lost its renewals stops committing before anyone may take the lease over.

Only the holder cleans temporary files and prunes what was never committed.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from ieiw.storage import fs

LEASE_FILE = ".lease.json"
LOCK_FILE = ".lease.lock"
DEFAULT_TTL = 120.0
COMMIT_MARGIN = 0.1  # of the ttl: a remote holder stops committing this long before its lease expires


class StageBusy(RuntimeError):
    """Another run holds the stage's lease."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over (it expired while the run was stalled)."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def boot_id() -> str | None:
    """This machine's boot (Linux): processes of one boot share it, whatever container they run in."""
    return _read("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str | None:
    """This process's pid namespace (Linux): two processes see each other's pids only within one."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass
class LeaseRecord:
    holder: str
    host: str
    pid: int
    expires: float
    acquired: float
    run: str = ""
    boot_id: str | None = None
    pid_ns: str | None = None
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

    def visible_here(self) -> bool:
        """Whether this process can tell if the holder's process runs: same boot, same pid namespace."""
        here = (boot_id(), pid_namespace())
        return None not in here and (self.boot_id, self.pid_ns) == here


def lease_url(stage_url: str) -> str:
    return fs.join(stage_url, LEASE_FILE)


def _parse(data: bytes) -> LeaseRecord | None:
    try:
        return LeaseRecord.from_bytes(data)
    except (ValueError, TypeError, KeyError):
        return None  # a torn or foreign file: treated as no lease, replaced on acquisition


def read_lease(stage_url: str) -> LeaseRecord | None:
    try:
        return _parse(fs.read_bytes(lease_url(stage_url)))
    except FileNotFoundError:
        return None


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
    """Expired, or held by a process this one can see and that no longer runs (see the module doc)."""
    now = time.time() if now is None else now
    if record.expires < now:
        return True
    if not record.visible_here():
        return False
    if record.pid == os.getpid():
        return record.holder not in _ACTIVE_HOLDERS
    return not _process_alive(record.pid)


# ------------------------------------------------------------------------------------------ fencing


@contextlib.contextmanager
def _locked(stage_url: str) -> Iterator[None]:
    """An exclusive lock of the stage's lease (local folders; elsewhere conditional writes fence)."""
    filesystem, path = fs.get_fs(stage_url)
    if not fs.is_local(filesystem):
        yield
        return
    import fcntl

    os.makedirs(path, exist_ok=True)
    descriptor = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _etag(stage_url: str) -> str | None:
    filesystem, path = fs.get_fs(lease_url(stage_url))
    try:
        info = filesystem.info(path)
    except FileNotFoundError:
        return None
    return info.get("ETag") or info.get("etag")


def _replace(stage_url: str, data: bytes, etag: str | None) -> None:
    """Write the lease: plainly under the local lock; conditionally on ``etag`` on an object store."""
    filesystem, path = fs.get_fs(lease_url(stage_url))
    if fs.is_local(filesystem) or not fs.has_atomic_put(filesystem) or etag is None:
        fs.write_bytes_atomic(lease_url(stage_url), data)
        return
    try:
        filesystem.pipe_file(path, data, IfMatch=etag)
    except Exception as error:  # noqa: BLE001 - botocore's PreconditionFailed comes wrapped as OSError
        if "PreconditionFailed" in repr(error) or "412" in str(error):
            raise LeaseLost(f"{stage_url}: the lease changed under this run (taken over)") from error
        raise
    filesystem.invalidate_cache(path)


def _check(stage_url: str, stage: str, holder: str, record: LeaseRecord | None) -> None:
    if record is None or record.holder != holder:
        who = record.describe() if record else "nobody"
        raise LeaseLost(f"stage {stage} at {stage_url}: this run no longer holds the lease (now: {who})")


@contextlib.contextmanager
def fenced(stage_url: str, stage: str, holder: str | None) -> Iterator[None]:
    """Run the block (a commit) only while ``holder`` holds the stage's lease: under the local lock, or,
    on an object store, while the lease it last renewed has not come close to expiring.
    ``holder=None`` (one-off tools and tests that hold no lease) fences nothing."""
    if holder is None:
        yield
        return
    with _locked(stage_url):
        record = read_lease(stage_url)
        _check(stage_url, stage, holder, record)
        filesystem, _ = fs.get_fs(stage_url)
        if not fs.is_local(filesystem) and record is not None:
            margin = COMMIT_MARGIN * max(0.0, record.expires - record.acquired)
            if time.time() > record.expires - margin:
                raise LeaseLost(f"stage {stage} at {stage_url}: this run's lease is about to expire")
        yield


def check_holder(stage_url: str, stage: str, holder: str | None) -> None:
    """Raise :class:`LeaseLost` unless ``holder`` holds the stage's lease (``None`` skips the check)."""
    with fenced(stage_url, stage, holder):
        pass


# -------------------------------------------------------------------------------------------- lease


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
            boot_id=boot_id(),
            pid_ns=pid_namespace(),
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
        """Remove a stale lease, unless it changed since it was read (someone renewed or took it)."""
        with _locked(self.stage_url):
            if read_lease(self.stage_url) == stale:
                fs.remove(lease_url(self.stage_url))

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with contextlib.suppress(OSError, LeaseLost):
                self.renew()

    def renew(self) -> None:
        """Extend the lease, fenced by this holder's token: a lease taken over stays taken."""
        with _locked(self.stage_url):
            etag = _etag(self.stage_url)
            _check(self.stage_url, self.stage, self.holder, read_lease(self.stage_url))
            renewed = LeaseRecord(**{**asdict(self.record), "expires": time.time() + self.ttl})
            _replace(self.stage_url, renewed.to_bytes(), etag)
            self.record = renewed

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is no longer this holder's."""
        check_holder(self.stage_url, self.stage, self.holder)

    def release(self) -> None:
        _ACTIVE_HOLDERS.discard(self.holder)
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        with _locked(self.stage_url):
            current = read_lease(self.stage_url)
            if current is not None and current.holder == self.holder:
                fs.remove(lease_url(self.stage_url))

    def __enter__(self) -> StageLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
