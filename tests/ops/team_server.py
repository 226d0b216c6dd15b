"""A real Prefect server on PostgreSQL, and process workers, as a team runs them (for the ops tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from postgres_server import free_port, postgres_server

PREFECT = str(Path(sys.executable).with_name("prefect"))


@contextmanager
def prefect_server_on_postgres():
    """Yield ``(api_url, env)``; ``env`` points subprocesses (CLI, workers) at the server."""
    with postgres_server() as database, tempfile.TemporaryDirectory(prefix="ieiw-prefect-") as home:
        database_url = database.create_database("prefect")
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        env = {
            **os.environ,
            "PREFECT_HOME": home,
            "PREFECT_API_URL": api_url,
            "PREFECT_UI_API_URL": api_url,
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url.replace(
                "postgresql+psycopg2://", "postgresql+asyncpg://"
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "TQDM_DISABLE": "1",
        }
        log = open(os.path.join(home, "server.log"), "wb")
        server = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_healthy(api_url, server, os.path.join(home, "server.log"))
            yield api_url, env
        finally:
            kill_tree(server.pid)
            log.close()


def wait_healthy(api_url: str, process: subprocess.Popen, log_path: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the Prefect server exited:\n" + open(log_path).read()[-3000:])
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass  # not up yet
        time.sleep(0.5)
    raise RuntimeError("the Prefect server did not start:\n" + open(log_path).read()[-3000:])


def start_worker(env: dict, log_path: str, pool: str = "ieiw-process") -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=str(Path(__file__).resolve().parents[2]),
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (workers start flow runs as child processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started."""
    for target in [pid, *descendants(pid)]:
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            continue  # already gone
