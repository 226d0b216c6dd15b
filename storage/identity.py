"""Identities of models and input files by their content, never by where they lie.

A build's keys and fingerprints use these, so the same checkpoint gives the same identity on another
machine or after it is moved, and a changed checkpoint at the same path gives another one:

- a local file: ``sha256:<hex>`` of its bytes;
- a local folder (a diffusers or transformers checkpoint): ``sha256-tree:<hex>`` over its files'
  relative names and digests;
- a Hugging Face hub id: ``hf:<id>@<commit>``, pinned when the stage runs (:mod:`ieiw.storage.models`);
- a URL: the SHA-256 of the file it was pinned to;
- anything else (a URL, a named open_clip release): the name itself, which is a fixed release.

Digests of local files are cached by (real path, size, modification time) under
``$IEIW_CACHE/digests`` (default ``~/.cache/ieiw``), so a multi-gigabyte checkpoint is read once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

CHUNK = 1 << 20


def cache_root() -> Path:
    return Path(os.environ.get("IEIW_CACHE") or Path.home() / ".cache" / "ieiw")


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, cached by (real path, size, mtime) so it is computed once."""
    real = os.path.realpath(os.fspath(path))
    stat = os.stat(real)
    entry = cache_root() / "digests" / f"{hashlib.sha1(real.encode('utf-8')).hexdigest()}.json"
    signature = {"path": real, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        cached = json.loads(entry.read_text())
        if {k: cached.get(k) for k in signature} == signature:
            return str(cached["sha256"])
    except (OSError, ValueError, KeyError):
        pass  # no cache entry yet, or an unreadable one: compute it
    digest = hashlib.sha256()
    with open(real, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(json.dumps({**signature, "sha256": value}))
        os.replace(tmp, entry)
    except OSError:
        pass  # a read-only home: the digest is still right, only not cached
    return value


def folder_digest(path: str | os.PathLike) -> str:
    """A digest over every file of a folder: relative names and contents (hidden entries skipped)."""
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = file.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        digest.update(f"{relative.as_posix()}\0{file_digest(file)}\n".encode())
    return digest.hexdigest()


def short(identity: str | None, length: int = 12) -> str:
    """``sha256:ab12cd34..`` for messages: enough of the digest to tell two apart."""
    if not identity:
        return "none"
    scheme, _, value = identity.partition(":")
    if scheme.startswith("sha256") and len(value) > length:
        return f"{scheme} {value[:length]}.."
    return identity


def hub_revision(repo_id: str, revision: str = "main") -> str | None:
    """The commit ``revision`` of a hub repository points to in the local hub cache, if cached."""
    from ieiw.storage.models import cached_commit

    return cached_commit(repo_id, revision)


def looks_like_hub_id(value: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", value)) and not os.path.exists(value)


def model_identity(reference: str | os.PathLike | None) -> str | None:
    """What a model is, by content (:func:`ieiw.storage.models.identity`)."""
    from ieiw.storage.models import identity

    return identity(reference)
