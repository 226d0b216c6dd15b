"""File-system helpers over fsspec: local paths, ``memory://`` in tests, ``s3://`` at scale."""

from __future__ import annotations

import contextlib
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


# Object stores whose PUT (and completed multipart upload) is atomic: an object appears whole or not at
# all, so a file is written once under its final name instead of written and then copied by a rename.
ATOMIC_PUT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "abfs", "az", "adl"})


def _protocols(filesystem: fsspec.AbstractFileSystem) -> set[str]:
    protocol = filesystem.protocol
    return set(protocol) if isinstance(protocol, (tuple, list)) else {protocol}


def is_local(filesystem: fsspec.AbstractFileSystem) -> bool:
    return bool(_protocols(filesystem) & {"file", "local"})


def has_atomic_put(filesystem: fsspec.AbstractFileSystem) -> bool:
    return bool(_protocols(filesystem) & ATOMIC_PUT_PROTOCOLS)


@contextmanager
def atomic_open(url: str) -> Iterator[IO[bytes]]:
    """Open ``url`` for binary writing; the file appears under its name only once complete.

    - Local files: the bytes go to a hidden temporary sibling, are fsynced, and the sibling is renamed
      over the name (and the folder fsynced), so neither a killed process nor a crash of the machine
      leaves a half-written file under the name.
    - Object stores (S3, GCS, Azure): one PUT (or multipart upload) to the final name, which is atomic
      there; on an error the upload is discarded, never completed.
    - Other fsspec stores (``memory://`` in tests): a hidden temporary renamed when complete.
    """
    filesystem, path = get_fs(url)
    if is_local(filesystem):
        with _local_atomic(path) as handle:
            yield handle
        return
    parent = posixpath.dirname(path)
    if parent:
        filesystem.makedirs(parent, exist_ok=True)
    if has_atomic_put(filesystem):
        handle = filesystem.open(path, "wb")
        try:
            yield handle
        except BaseException:
            _discard(handle)
            raise
        handle.close()
        return
    tmp = temporary_name(path)
    try:
        with filesystem.open(tmp, "wb") as handle:
            yield handle
        filesystem.mv(tmp, path)
    except BaseException:
        if filesystem.exists(tmp):
            filesystem.rm(tmp)
        raise


def _discard(handle: IO[bytes]) -> None:
    """Abandon an object-store upload: abort the multipart upload and never complete the PUT."""
    discard = getattr(handle, "discard", None)
    if callable(discard):
        discard()
    handle.closed = True  # fsspec's buffered files would otherwise upload what they hold on close


@contextmanager
def _local_atomic(path: str) -> Iterator[IO[bytes]]:
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(parent)


def _fsync_dir(folder: str) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform opens folders
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is still atomic
    finally:
        os.close(descriptor)


def write_bytes_atomic(url: str, data: bytes) -> None:
    with atomic_open(url) as handle:
        handle.write(data)


def create_exclusive(url: str, data: bytes) -> bool:
    """Write ``url`` only if nothing exists there; True if this call created it.

    Local files use ``O_CREAT | O_EXCL``; S3 a conditional PUT (``If-None-Match: *``); other stores
    check then write, which is not atomic (good enough for ``memory://`` in one process).
    """
    filesystem, path = get_fs(url)
    if is_local(filesystem):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return True
    parent = posixpath.dirname(path)
    if parent:
        filesystem.makedirs(parent, exist_ok=True)
    if has_atomic_put(filesystem):
        try:
            with filesystem.open(path, "xb") as handle:
                handle.write(data)
            return True
        except (FileExistsError, OSError) as error:
            if isinstance(error, FileExistsError) or "PreconditionFailed" in str(error):
                return False
            raise
    if filesystem.exists(path):
        return False
    with filesystem.open(path, "wb") as handle:
        handle.write(data)
    return True


def remove(url: str) -> bool:
    """Delete ``url`` if it exists; True if it did."""
    filesystem, path = get_fs(url)
    try:
        filesystem.rm(path)
        return True
    except FileNotFoundError:
        return False


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
