"""File-system helpers over fsspec: local paths, ``memory://`` in tests, ``s3://`` at scale."""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import fsspec
from fsspec.core import url_to_fs


def get_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the file system and the path inside it for ``url``."""
    fs, path = url_to_fs(str(url))
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join ``url`` and ``parts`` with forward slashes, keeping any protocol prefix."""
    url = str(url)
    return posixpath.join(url.rstrip("/") if url not in ("/", "") else url, *parts)


def exists(url: str) -> bool:
    fs, path = get_fs(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = get_fs(url)
    fs.makedirs(path, exist_ok=True)


def list_files(url: str, suffix: str) -> list[str]:
    """Sorted URLs of the files directly under ``url`` whose names end with ``suffix``."""
    fs, path = get_fs(url)
    fs.invalidate_cache(path)  # object-store listings are cached; a resumed stage needs the truth
    if not fs.exists(path):
        return []
    names = [p for p in fs.ls(path, detail=False) if p.endswith(suffix)]
    protocol = _protocol_prefix(url)
    return sorted(_with_protocol(protocol, p) for p in names)


def _protocol_prefix(url: str) -> str:
    url = str(url)
    return url.split("://", 1)[0] + "://" if "://" in url else ""


def _with_protocol(prefix: str, path: str) -> str:
    if not prefix or prefix == "file://":
        return path
    return prefix + path.lstrip("/")


def temporary_name(url: str) -> str:
    """A sibling name for writing ``url`` before it is complete (never matched by readers)."""
    head, tail = posixpath.split(str(url))
    return posixpath.join(head, f".{tail}.tmp-{uuid.uuid4().hex[:8]}")


@contextmanager
def atomic_open(url: str) -> Iterator[IO[bytes]]:
    """Open ``url`` for binary writing; the file appears under its name only once complete.

    The bytes go to a hidden temporary sibling that is renamed on success and removed on error,
    so a reader never sees a half-written file, even after the process is killed.
    """
    fs, path = get_fs(url)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with fs.open(tmp, "wb") as handle:
            yield handle
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


def write_bytes_atomic(url: str, data: bytes) -> None:
    with atomic_open(url) as handle:
        handle.write(data)


def read_bytes(url: str) -> bytes:
    fs, path = get_fs(url)
    with fs.open(path, "rb") as handle:
        return handle.read()


def remove_stale_temporaries(url: str) -> int:
    """Delete temporary files a killed run left in ``url``; returns how many."""
    fs, path = get_fs(url)
    if not fs.exists(path):
        return 0
    stale = [p for p in fs.ls(path, detail=False) if ".tmp-" in posixpath.basename(p)]
    for p in stale:
        fs.rm(p)
    return len(stale)


def resolve_path(value: str, base: str | os.PathLike) -> str:
    """Expand ``$VARS`` and ``~``; keep URLs and absolute paths; make a relative path relative to ``base``.

    Config files use this so that paths in them mean the same wherever the command runs.
    """
    value = os.path.expanduser(os.path.expandvars(value))
    if "://" in value or os.path.isabs(value):
        return value
    return os.path.abspath(os.path.join(os.fspath(base), value))
