"""Leases across containers and machines: liveness is never judged by a host name and a pid alone, and
a run whose lease was taken over can neither renew nor commit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from ieiw.storage import fs, manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.lease import (
    LeaseLost,
    LeaseRecord,
    StageBusy,
    StageLease,
    boot_id,
    is_stale,
    lease_url,
    pid_namespace,
    read_lease,
)
from ieiw.storage.stage_folder import commit_files, open_stage

FP = Fingerprint(stage="removal", settings={"dilation": 9})


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_dead_pid_in_another_pid_namespace_proves_nothing():
    """Two containers with host networking share the host name; a pid of the other's namespace may be
    free in ours while its process runs there: only the ttl frees such a lease."""
    now = time.time()
    common = {"holder": "x", "host": os.uname().nodename, "pid": _dead_pid(), "acquired": now}
    here = LeaseRecord(**common, expires=now + 600, boot_id=boot_id(), pid_ns=pid_namespace())
    other_container = LeaseRecord(**common, expires=now + 600, boot_id=boot_id(), pid_ns="pid:[1]")
    other_boot = LeaseRecord(**common, expires=now + 600, boot_id="another-boot", pid_ns=pid_namespace())
    unknown = LeaseRecord(**common, expires=now + 600)  # written where neither could be read
    assert is_stale(here)  # this process can see that pid: the holder is gone
    assert not any(map(is_stale, (other_container, other_boot, unknown)))
    assert is_stale(LeaseRecord(**{**common, "expires": now - 1}, pid_ns="pid:[1]"))  # expired: stale


def test_a_holder_whose_lease_was_taken_can_neither_renew_nor_commit(tmp_path):
    url = str(tmp_path / "stage")
    with open_stage(url, FP, lease_ttl=60) as writer:
        thief = LeaseRecord(holder="thief", host="h", pid=1, expires=time.time() + 60, acquired=time.time())
        fs.write_bytes_atomic(lease_url(url), thief.to_bytes())
        with pytest.raises(LeaseLost):
            writer.lease.renew()
        assert read_lease(url).holder == "thief"  # the renewal did not overwrite the new holder's lease
        with pytest.raises(LeaseLost):
            writer.list_batch("b0", 0, ["r0"])
        import pyarrow as pa

        with pytest.raises(LeaseLost):
            commit_files(url, "b0", pa.table({"key": ["a"]}), {"x.bin": b"x"}, writer.digest, writer.holder)
        fs.remove(lease_url(url))
    assert manifest.completed_batches(url) == set()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from ieiw.storage.lease import StageLease
    lease = StageLease(sys.argv[1], "removal", ttl=float(sys.argv[2])).acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_live_holder_in_another_pid_namespace_keeps_its_stage(tmp_path):
    """The first run holds the lease from its own pid namespace (a container), alive; a second run on
    the same host name, in another pid namespace, must not take it over, whatever pid it sees."""
    url = str(tmp_path / "stage")
    fs.makedirs(url)
    first = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", HOLDER, url, "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout.readline().strip() == "held", "the first run never took the lease"
        held = read_lease(url)
        assert held.pid_ns != pid_namespace() and held.host == os.uname().nodename
        assert held.pid <= 5  # the holder is pid 1 or 2 of its namespace: here such a pid is another process
        with pytest.raises(StageBusy, match="being written by another run"):
            StageLease(url, "removal", ttl=30, wait_seconds=1.0).acquire()
        assert read_lease(url).holder == held.holder  # untouched
    finally:
        first.kill()
        first.wait()
