"""Find a Prefect server, or start a local one (SQLite) in the background."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prefect.settings import get_current_settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def configured_api_url() -> str | None:
    """The API URL from the environment or the active Prefect profile, if any."""
    url = get_current_settings().api.url
    return str(url) if url else None


def prefect_executable() -> str:
    beside = Path(sys.executable).with_name("prefect")
    return str(beside) if beside.exists() else (shutil.which("prefect") or "prefect")


def start_local_server(
    host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_dir: str = ".ieiw", wait_seconds: float = 120.0
) -> str:
    """Start ``prefect server start`` detached (it outlives this command) and wait until it answers."""
    api_url = f"http://{host}:{port}/api"
    if healthy(api_url):
        return api_url
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, "prefect-server.log")
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [prefect_executable(), "server", "start", "--host", host, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if healthy(api_url):
            return api_url
        time.sleep(1.0)
    raise RuntimeError(
        f"the Prefect server did not answer at {api_url} within {wait_seconds:.0f}s; see {log_path}"
    )


def ensure_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The configured server if it answers; otherwise a local one, started if needed."""
    configured = configured_api_url()
    if configured:
        if not healthy(configured):
            raise RuntimeError(f"PREFECT_API_URL={configured} does not answer; start it or unset it")
        return configured
    return start_local_server(host, port)


def ui_url(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")
