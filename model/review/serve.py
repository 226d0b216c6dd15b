"""Serving the review app with uvicorn: in the foreground (``ieiw review``) or in a background thread
(a flow that monitors progress meanwhile, the load bench, the browser tests)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until interrupted."""
    uvicorn.run(app, host=host, port=port, log_level="warning")


@contextmanager
def serving(
    app: FastAPI, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 30.0
) -> Iterator[str]:
    """Serve ``app`` in a background thread; yields its base URL and stops the server on exit."""
    port = port or free_port(host)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", timeout_keep_alive=30)
    )
    thread = threading.Thread(target=server.run, name=f"review-app-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the review app did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
