"""What the model layer's stages read, by identity: input shards and input folders, never their paths.

A stage of the model layer (the latent cache, candidates, the review export) fingerprints what it
reads, so the same inputs give the same fingerprint on another machine or at another path, and a
changed input gives another one:

- a shard of one of our stage folders (``<stage>/shards/<name>``): the stage's digest, recorded in its
  ``stage.json``, and the shard's name (a stage's shards are a function of its fingerprint);
- any other shard (a WebDataset someone else wrote): its name, size and modification time;
- an input folder or pattern (:func:`input_identities`): a stage folder is its digest; anything else
  the identities of the shards a reader takes from it (:func:`ieiw.storage.manifest.resolve_shards`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from ieiw.storage import fs, manifest
from ieiw.storage.schema import stable_key
from ieiw.storage.stage_folder import read_record


def _stage_digest(stage_url: str, records: dict[str, str | None]) -> str | None:
    """The fingerprint digest recorded in ``stage_url``'s ``stage.json`` (memoised in ``records``)."""
    if stage_url not in records:
        record = read_record(stage_url) if manifest.is_stage_folder(stage_url) else None
        records[stage_url] = (record or {}).get("fingerprint", {}).get("digest")
    return records[stage_url]


def _stage_of_shard(url: str) -> str | None:
    """The stage folder a shard URL lies in (``<stage>/shards/<name>``), if it has that shape."""
    parent = posixpath.dirname(str(url).rstrip("/"))
    if posixpath.basename(parent) != manifest.SHARD_DIR:
        return None
    return posixpath.dirname(parent)


def shard_identity(url: str, records: dict[str, str | None] | None = None) -> str:
    """What one input shard is, independent of where it lies (see the module docstring)."""
    records = {} if records is None else records
    name = posixpath.basename(str(url))
    stage = _stage_of_shard(url)
    if stage is not None:
        digest = _stage_digest(stage, records)
        if digest:
            return f"stage:{digest}/{name}"
    filesystem, path = fs.get_fs(url)
    info = filesystem.info(path)
    modified = next(
        (info[k] for k in ("mtime", "LastModified", "updated", "last_modified", "ETag") if info.get(k)), ""
    )
    return f"file:{name}:{info.get('size')}:{modified}"


def shard_identities(urls: Iterable[str]) -> dict[str, str]:
    """``{url: identity}`` for many shards (each stage record read once)."""
    records: dict[str, str | None] = {}
    return {url: shard_identity(url, records) for url in urls}


def stage_url_of(url: str) -> str | None:
    """The stage folder ``url`` names (itself, or the folder whose ``shards/`` it is), if any."""
    url = str(url).rstrip("/")
    if manifest.is_stage_folder(url):
        return url
    parent, name = posixpath.split(url)
    if name == manifest.SHARD_DIR and manifest.is_stage_folder(parent):
        return parent
    return None


def input_identities(urls: Iterable[str] | str) -> dict[str, str]:
    """``{label: identity}`` of each input a stage reads, for a fingerprint's ``upstream``.

    The label is the input's folder or file name (never the whole path; a repeated name gets ``#2``);
    the identity is a stage folder's recorded digest, else a digest of the identities of the shards a
    reader takes from the input.
    """
    if isinstance(urls, str):
        urls = [urls]
    records: dict[str, str | None] = {}
    out: dict[str, str] = {}
    for url in urls:
        stage = stage_url_of(url)
        digest = _stage_digest(stage, records) if stage else None
        if digest:
            label, identity = posixpath.basename(stage), f"stage:{digest}"
        else:
            label = posixpath.basename(str(url).rstrip("/")) or str(url)
            shards = manifest.resolve_shards(url)
            identity = "shards:" + stable_key([shard_identity(s, records) for s in shards])
        unique, n = label, 1
        while unique in out:
            n += 1
            unique = f"{label}#{n}"
        out[unique] = identity
    return out
