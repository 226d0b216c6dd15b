"""What the model layer's stages read and use, by identity: input shards, input folders and trained
models, never their paths.

A stage of the model layer (the latent cache, candidates, the review export) fingerprints what it
reads, so the same inputs give the same fingerprint on another machine or at another path, and a
changed input gives another one:

- a shard of one of our stage folders (``<stage>/shards/<name>``): the stage's digest, recorded in its
  ``stage.json``, and the shard's name (a stage's shards are a function of its fingerprint);
- any other shard (a WebDataset someone else wrote): its name, size and modification time;
- an input folder or pattern (:func:`input_identities`): a stage folder is its digest; anything else
  the identities of the shards a reader takes from it (:func:`ieiw.storage.manifest.resolve_shards`),
  labelled by the stage's name or the input's place, never by a path;
- a trained model: :func:`ieiw.storage.identity.model_identity`, which takes a diffusers pipeline
  folder by its weights and configs only, never by the logs and checkpoints training writes beside them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from ieiw.storage import fs, manifest
from ieiw.storage.schema import stable_key
from ieiw.storage.stage_folder import read_record


def _stage_fingerprint(stage_url: str, records: dict[str, dict]) -> dict:
    """The fingerprint record in ``stage_url``'s ``stage.json`` ({} when none; memoised in ``records``)."""
    if stage_url not in records:
        record = read_record(stage_url) if manifest.is_stage_folder(stage_url) else None
        records[stage_url] = (record or {}).get("fingerprint", {})
    return records[stage_url]


def _stage_of_shard(url: str) -> str | None:
    """The stage folder a shard URL lies in (``<stage>/shards/<name>``), if it has that shape."""
    parent = posixpath.dirname(str(url).rstrip("/"))
    if posixpath.basename(parent) != manifest.SHARD_DIR:
        return None
    return posixpath.dirname(parent)


def shard_identity(url: str, records: dict[str, dict] | None = None) -> str:
    """What one input shard is, independent of where it lies (see the module docstring)."""
    records = {} if records is None else records
    name = posixpath.basename(str(url))
    stage = _stage_of_shard(url)
    if stage is not None:
        digest = _stage_fingerprint(stage, records).get("digest")
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
    records: dict[str, dict] = {}
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

    A stage folder of ours is labelled with the stage it holds (``filter``) and identified by its
    recorded digest; any other input is ``shards[<i>]`` (its place among the inputs) with a digest of
    the identities of the shards a reader takes from it. No label or identity holds a path.
    """
    if isinstance(urls, str):
        urls = [urls]
    records: dict[str, dict] = {}
    out: dict[str, str] = {}
    for i, url in enumerate(urls):
        stage = stage_url_of(url)
        recorded = _stage_fingerprint(stage, records) if stage else {}
        if recorded.get("digest"):
            label, identity = str(recorded.get("stage") or "stage"), f"stage:{recorded['digest']}"
        else:
            shards = manifest.resolve_shards(url)
            label = f"shards[{i}]"
            identity = "shards:" + stable_key([shard_identity(s, records) for s in shards])
        unique, n = label, 1
        while unique in out:
            n += 1
            unique = f"{label}#{n}"
        out[unique] = identity
    return out
