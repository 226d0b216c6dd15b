"""WebDataset tar shards: a bounded, atomic writer and a streaming reader.

A shard holds, per sample, ``<key>.src.<ext>``, ``<key>.tgt.<ext>``, an optional
``<key>.mask.png`` and ``<key>.json`` (the :class:`~storage.schema.SampleMeta`). Any WebDataset
reader opens them; :func:`iter_samples` reads them back here, also from fsspec URLs.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel

from ieiw.storage import fs
from ieiw.storage.config import operational
from ieiw.storage.images import ImageFormat, decode_image, encode_image
from ieiw.storage.manifest import resolve_shards
from ieiw.storage.schema import EncodedSample, Sample, SampleMeta

SHARD_SUFFIX = ".tar"
DIFFERENCE_THRESHOLD = 8  # per channel, out of 255: above JPEG noise, below any real edit


class ShardSpec(BaseModel):
    """Bounds and encodings of the shards a stage writes."""

    max_samples: int = operational(1000)  # shard sizes cut the same samples differently
    max_bytes: int = operational(1 << 30)
    image_format: ImageFormat = "png"
    jpeg_quality: int = 95


def encode_sample(sample: Sample, spec: ShardSpec) -> dict[str, bytes]:
    """The tar members of one sample, keyed by their extension."""
    ext = spec.image_format
    members = {
        f"src.{ext}": encode_image(sample.source, ext, spec.jpeg_quality),
        f"tgt.{ext}": encode_image(sample.target, ext, spec.jpeg_quality),
    }
    # Every sample has the same members, so readers that infer columns from the first samples of the
    # first shard (Hugging Face datasets) lose nothing: a task without a region of its own gets the
    # pixels where target and source differ, and says so in its json (``mask_kind: difference``).
    mask, kind = (
        (sample.mask, "given") if sample.mask is not None else (difference_mask(sample), "difference")
    )
    members["mask.png"] = encode_image(mask, "png")
    members["json"] = sample.meta.to_json_bytes(kind)
    return members


def difference_mask(sample: Sample, threshold: int = DIFFERENCE_THRESHOLD) -> np.ndarray:
    """White where the target differs from the source by more than ``threshold`` in some channel (all
    white when their sizes differ: the whole image changed)."""
    if sample.source.shape != sample.target.shape:
        return np.full(sample.target.shape[:2], 255, np.uint8)
    diff = np.abs(sample.source.astype(np.int16) - sample.target.astype(np.int16)).max(axis=-1)
    return np.where(diff > threshold, 255, 0).astype(np.uint8)


def decode_sample(members: dict[str, bytes]) -> Sample:
    """Rebuild a :class:`Sample` from the members of one tar group."""
    record = json.loads(members["json"])
    meta = SampleMeta.model_validate(record)
    src = _one(members, "src")
    tgt = _one(members, "tgt")
    mask = members.get("mask.png") if record.get("mask_kind", "given") == "given" else None
    return Sample(
        meta=meta,
        source=decode_image(src),
        target=decode_image(tgt),
        mask=decode_image(mask, "L") if mask is not None else None,
    )


def _one(members: dict[str, bytes], stem: str) -> bytes:
    for name, data in members.items():
        if name.split(".", 1)[0] == stem:
            return data
    raise KeyError(f"sample has no {stem}.* member (has {sorted(members)})")


@dataclass
class WrittenShard:
    """A finished shard: its URL and the keys it holds, in order."""

    url: str
    keys: list[str] = field(default_factory=list)
    bytes: int = 0


class ShardWriter:
    """Writes samples into shards named ``<prefix>-<NNNN>.tar`` under ``directory``.

    A shard is rolled when it would exceed ``spec.max_samples`` or ``spec.max_bytes``. Each shard
    is written under a hidden temporary name and renamed when complete, so a killed writer leaves
    no half-written shard where a reader looks.
    """

    def __init__(self, directory: str, prefix: str, spec: ShardSpec | None = None) -> None:
        self.directory = directory
        self.prefix = prefix
        self.spec = spec or ShardSpec()
        self.written: list[WrittenShard] = []
        self._tar: tarfile.TarFile | None = None
        self._context = None
        self._handle = None
        self._current: WrittenShard | None = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._abort(exc_type, exc, tb)

    def write(self, sample: Sample | EncodedSample) -> str:
        """Add one sample (encoded, or copied as its members' bytes); returns the URL of its shard."""
        if isinstance(sample, EncodedSample):
            previous = sample.members.get("json")
            kind = json.loads(previous).get("mask_kind", "given") if previous else sample.mask_kind
            members = {**sample.members, "json": sample.meta.to_json_bytes(kind)}
        else:
            members = encode_sample(sample, self.spec)
        size = sum(len(v) for v in members.values()) + 512 * (len(members) + 1)
        current = self._current
        if current is not None and (
            len(current.keys) >= self.spec.max_samples or current.bytes + size > self.spec.max_bytes
        ):
            self._finish()
        if self._current is None:
            self._start()
        assert self._tar is not None and self._current is not None
        mtime = time.time()
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size = len(data)
            info.mtime = mtime
            self._tar.addfile(info, io.BytesIO(data))
        self._current.keys.append(sample.key)
        self._current.bytes += size
        return self._current.url

    def close(self) -> list[WrittenShard]:
        if self._current is not None:
            self._finish()
        return self.written

    def _start(self) -> None:
        name = f"{self.prefix}-{len(self.written):04d}{SHARD_SUFFIX}"
        url = fs.join(self.directory, name)
        self._context = fs.atomic_open(url)
        self._handle = self._context.__enter__()
        self._tar = tarfile.open(fileobj=self._handle, mode="w|", format=tarfile.USTAR_FORMAT)
        self._current = WrittenShard(url=url)

    def _finish(self) -> None:
        assert self._tar is not None and self._context is not None and self._current is not None
        self._tar.close()
        self._context.__exit__(None, None, None)
        self.written.append(self._current)
        self._tar = self._context = self._handle = self._current = None

    def _abort(self, exc_type, exc, tb) -> None:
        if self._tar is not None:
            with contextlib.suppress(OSError, ValueError):
                self._tar.close()  # flush into the temporary file, which the context then deletes
        if self._context is not None:
            self._context.__exit__(exc_type, exc, tb)
        self._tar = self._context = self._handle = self._current = None


def iter_tar_groups(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {extension: bytes})`` for each sample of one tar shard, streaming."""
    filesystem, path = fs.get_fs(url)
    with filesystem.open(path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
        key: str | None = None
        group: dict[str, bytes] = {}
        for info in tar:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)[-1]
            if "." not in base:
                continue
            member_key, ext = base.split(".", 1)
            extracted = tar.extractfile(info)
            data = extracted.read() if extracted is not None else b""
            if key is not None and member_key != key:
                yield key, group
                group = {}
            key = member_key
            group[ext] = data
        if key is not None:
            yield key, group


def iter_samples(urls: Iterable[str]) -> Iterator[Sample]:
    """Yield every sample of the given shards (files or directories of shards), in order."""
    for url in expand_shard_urls(urls):
        for _, members in iter_tar_groups(url):
            yield decode_sample(members)


def iter_metas(urls: Iterable[str]) -> Iterator[SampleMeta]:
    """Yield only the metadata of every sample, without decoding images."""
    for url in expand_shard_urls(urls):
        for _, members in iter_tar_groups(url):
            yield SampleMeta.model_validate(json.loads(members["json"]))


def expand_shard_urls(urls: Iterable[str] | str) -> list[str]:
    """The shards to read for ``urls``: a stage folder (or its ``shards/``) stands for the shards its
    committed manifest parts list; shard files stay as they are (see :func:`manifest.reader_shards`)."""
    return resolve_shards(urls)
