"""The candidate shard format: N candidate edits per source sample, each with the settings that made it.

A WebDataset tar, one group per source sample, keyed by the source key:

- ``<key>.src.png``: the source image;
- ``<key>.cand_00.png`` ... ``<key>.cand_NN.png``: the candidate edits, in display order;
- ``<key>.json``: a :class:`CandidateHeader`: the instruction, the source sample's metadata (its
  provenance) and one :class:`CandidateSetting` per candidate (seed, guidance scales, checkpoint).

:class:`CandidateShardWriter` writes them; :func:`iter_candidate_sets` streams them back;
:class:`CandidateIndex` gives random access to single images (for the review app) without
unpacking the shards. :mod:`ieiw.model.candidates` makes them.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ieiw.model.inputs import input_identities
from ieiw.storage import fs
from ieiw.storage.images import decode_image, encode_image
from ieiw.storage.schema import SampleMeta, stable_key
from ieiw.storage.shards import SHARD_SUFFIX, expand_shard_urls, iter_shard_samples, shard_index

FORMAT = "ieiw-candidates/1"


class CandidateSetting(BaseModel):
    """How one candidate was made."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    text_guidance: float
    image_guidance: float
    steps: int
    checkpoint: str  # the checkpoint's identity by content (``sha256-tree:..``, ``hf:id@commit``)


class CandidateHeader(BaseModel):
    """The ``json`` member of a candidate group."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    key: str
    instruction: str
    source_meta: SampleMeta | None = None
    settings: list[CandidateSetting] = Field(default_factory=list)


@dataclass
class CandidateSet:
    """A source sample and its candidate edits (HxWx3 ``uint8`` arrays), in display order."""

    header: CandidateHeader
    source: np.ndarray
    candidates: list[np.ndarray] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.header.key


def candidate_member(index: int) -> str:
    return f"cand_{index:02d}.png"


# ---------------------------------------------------------------------------------------------- writing


class CandidateShardWriter:
    """Writes candidate sets into ``<directory>/<prefix>-NNNN.tar``, at most ``max_sets`` per shard.

    Each shard is written under a hidden temporary name and renamed when complete
    (:func:`ieiw.storage.fs.atomic_open`), so a killed run leaves no half-written shard.
    """

    def __init__(self, directory: str, prefix: str = "candidates", max_sets: int = 50) -> None:
        self.directory = directory
        self.prefix = prefix
        self.max_sets = max_sets
        self.written: list[str] = []
        self._context = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def __enter__(self) -> CandidateShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._context is not None:
            assert self._tar is not None
            self._tar.close()
            self._context.__exit__(exc_type, exc, tb)  # removes the temporary file
            self._context = self._tar = None

    def write(self, candidate_set: CandidateSet) -> str:
        """Add one candidate set; returns the URL of its shard."""
        header = candidate_set.header
        if len(header.settings) != len(candidate_set.candidates):
            raise ValueError(
                f"{header.key}: {len(candidate_set.candidates)} images for {len(header.settings)} settings"
            )
        if self._tar is not None and self._count >= self.max_sets:
            self._finish()
        if self._tar is None:
            self._start()
        assert self._tar is not None
        _add_members(self._tar, header.key, candidate_members(candidate_set), time.time())
        self._count += 1
        return self._url

    def close(self) -> list[str]:
        if self._tar is not None:
            self._finish()
        return self.written

    def _start(self) -> None:
        url = fs.join(self.directory, f"{self.prefix}-{len(self.written):04d}{SHARD_SUFFIX}")
        self._context = fs.atomic_open(url)
        handle = self._context.__enter__()
        self._tar = tarfile.open(fileobj=handle, mode="w|", format=tarfile.USTAR_FORMAT)
        self._url, self._count = url, 0

    def _finish(self) -> None:
        assert self._tar is not None and self._context is not None
        self._tar.close()
        self._context.__exit__(None, None, None)
        self.written.append(self._url)
        self._tar = self._context = None


def write_candidate_sets(
    sets: Iterable[CandidateSet], directory: str, prefix: str = "candidates", max_sets: int = 50
) -> list[str]:
    """Write all ``sets``; returns the shard URLs."""
    with CandidateShardWriter(directory, prefix, max_sets) as writer:
        for candidate_set in sets:
            writer.write(candidate_set)
    return writer.written


def candidate_members(candidate_set: CandidateSet) -> dict[str, bytes]:
    """The members of one candidate group, by extension: ``src.png``, ``cand_NN.png``, ``json``."""
    header = candidate_set.header
    if len(header.settings) != len(candidate_set.candidates):
        raise ValueError(
            f"{header.key}: {len(candidate_set.candidates)} images for {len(header.settings)} settings"
        )
    members = {"src.png": encode_image(candidate_set.source, "png")}
    for index, image in enumerate(candidate_set.candidates):
        members[candidate_member(index)] = encode_image(image, "png")
    members["json"] = header.model_dump_json().encode("utf-8")
    return members


def _add_members(tar: tarfile.TarFile, key: str, members: dict[str, bytes], mtime: float) -> None:
    for ext, data in members.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime = len(data), mtime
        tar.addfile(info, io.BytesIO(data))


def candidate_shard(sets: Iterable[CandidateSet]) -> bytes:
    """One shard holding ``sets``, as bytes (a candidates batch's file). Every member's time is 0, so the
    same sets make the same bytes whenever they are made."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for candidate_set in sets:
            _add_members(tar, candidate_set.key, candidate_members(candidate_set), 0)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- reading


def decode_candidate_set(members: dict[str, bytes]) -> CandidateSet:
    header = CandidateHeader.model_validate_json(members["json"])
    if header.format != FORMAT:
        raise ValueError(f"{header.key}: unknown candidate format {header.format!r}")
    candidates = [decode_image(members[candidate_member(i)]) for i in range(len(header.settings))]
    return CandidateSet(header=header, source=decode_image(members["src.png"]), candidates=candidates)


def iter_candidate_sets(urls: Iterable[str] | str) -> Iterator[CandidateSet]:
    """Stream every candidate set of the given shards or folders of shards (the one shard reader,
    :func:`ieiw.storage.shards.iter_shard_samples`)."""
    for raw in iter_shard_samples(urls):
        yield decode_candidate_set(raw)


def iter_candidate_headers(urls: Iterable[str] | str) -> Iterator[CandidateHeader]:
    """Stream only the headers (no image decoding)."""
    for raw in iter_shard_samples(urls):
        yield CandidateHeader.model_validate_json(raw["json"])


def _is_header(ext: str) -> bool:
    return ext == "json"


@dataclass(frozen=True)
class MemberLocation:
    """Where one member's bytes lie in its shard."""

    url: str
    offset: int
    size: int


def read_member(location: MemberLocation) -> bytes:
    """One member's bytes: one seek and one read."""
    filesystem, path = fs.get_fs(location.url)
    with filesystem.open(path, "rb") as handle:
        handle.seek(location.offset)
        return handle.read(location.size)


class CandidateIndex:
    """Random access to the members of candidate shards: where each image's bytes lie in its tar.

    Building it reads only tar headers and the small ``json`` members
    (:func:`ieiw.storage.shards.shard_index`); an image is then one seek and one read, so the review app
    serves thousands of candidates without unpacking anything.
    """

    def __init__(self) -> None:
        self.headers: dict[str, CandidateHeader] = {}
        self.sources: list[str] = []  # what it was built from (a stage folder, shards, folders)
        self._members: dict[tuple[str, str], MemberLocation] = {}

    @classmethod
    def build(cls, urls: Iterable[str] | str) -> CandidateIndex:
        index = cls()
        index.sources = [urls] if isinstance(urls, str) else list(urls)
        for url in expand_shard_urls(index.sources):
            index._add_shard(url)
        return index

    def identity(self) -> dict[str, str]:
        """What the index holds, by identity (for a fingerprint's ``upstream``): its sources' identities,
        or, for an index not built from shards, a digest of its headers."""
        if self.sources:
            found = input_identities(self.sources)
            return {"candidates" if len(found) == 1 else f"candidates:{k}": v for k, v in found.items()}
        headers = [self.headers[k].model_dump(mode="json") for k in sorted(self.headers)]
        return {"candidates": "headers:" + stable_key(headers)}

    def _add_shard(self, url: str) -> None:
        for found in shard_index(url, read=_is_header):
            self._members[(found.key, found.ext)] = MemberLocation(url, found.offset, found.size)
            if found.data is not None:
                header = CandidateHeader.model_validate_json(found.data)
                if header.format != FORMAT:
                    raise ValueError(f"{url}: {header.key}: unknown candidate format {header.format!r}")
                self.headers[header.key] = header

    def __len__(self) -> int:
        return len(self.headers)

    def __contains__(self, key: str) -> bool:
        return key in self.headers

    def location(self, key: str, member: str) -> MemberLocation:
        """Where ``<key>.<member>`` lies (e.g. ``src.png``, ``cand_03.png``); KeyError if absent."""
        return self._members[(key, member)]

    def find(self, key: str, member: str) -> MemberLocation | None:
        """Where ``<key>.<member>`` lies, or None when the shards do not hold it."""
        return self._members.get((key, member))

    def read(self, key: str, member: str) -> bytes:
        """The bytes of ``<key>.<member>`` (e.g. ``src.png``, ``cand_03.png``); KeyError if absent."""
        return read_member(self.location(key, member))

    def image(self, key: str, member: str) -> np.ndarray:
        return decode_image(self.read(key, member))
