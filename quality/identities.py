"""Identities by content of what the quality stages read besides models: the GIQA reference index, the
evaluation set and the stages they read (by their recorded digests). Fingerprints use them, so a
rebuilt index, another eval set or other candidates is a change the score or filter stage names, while
the same files at another path are not.
"""

from __future__ import annotations

import os
import posixpath

from ieiw.storage import manifest
from ieiw.storage.identity import file_digest, folder_digest, model_identity
from ieiw.storage.schema import stable_key
from ieiw.storage.stage_folder import recorded_fingerprint

# What a reference index is made of (quality.giqa_index): its metadata, the index, its on-disk lists.
REFERENCE_FILES = ("reference.json", "reference.index", "reference.ivfdata")


def reference_index_identity(index_dir: str) -> str:
    """``sha256-index:<digest>`` over the index's record and files (digests cached by path and mtime,
    so a LAION-scale index is read once)."""
    found = {
        name: file_digest(os.path.join(index_dir, name))
        for name in REFERENCE_FILES
        if os.path.isfile(os.path.join(index_dir, name))
    }
    if "reference.json" not in found:
        raise FileNotFoundError(f"{index_dir} has no reference.json: build it with build_reference_index")
    return f"sha256-index:{stable_key('giqa-reference', found)}"


def data_identity(url: str) -> str:
    """An input data set by content: a stage folder of ours by the digests of its committed shards
    (local) or its recorded fingerprint and shard names (remote); a local file or folder by its
    digest; anything else by its URL."""
    if manifest.is_stage_folder(url):
        shards = manifest.committed_shards(url)
        if all("://" not in s for s in shards):
            return "sha256-shards:" + stable_key([(posixpath.basename(s), file_digest(s)) for s in shards])
        recorded = recorded_fingerprint(url)
        names = [posixpath.basename(s) for s in shards]
        return "stage:" + stable_key(recorded.digest if recorded else None, names)
    if "://" not in url and os.path.isdir(url):
        return f"sha256-tree:{folder_digest(url)}"
    if "://" not in url and os.path.isfile(url):
        return f"sha256:{file_digest(url)}"
    return model_identity(url) or url


UNRECORDED = "unrecorded"


def upstream_digest(stage_url: str) -> str:
    """The recorded fingerprint digest of a stage another one reads (``unrecorded`` for a folder written
    without a stage record, by an older version or by hand): the reader's fingerprint holds it."""
    recorded = recorded_fingerprint(stage_url)
    return recorded.digest if recorded is not None else UNRECORDED
