"""WebDataset tar shards: a bounded, atomic writer and the project's one shard reader.

A shard holds, per sample, ``<key>.src.<ext>``, ``<key>.tgt.<ext>``, an optional
``<key>.mask.png`` and ``<key>.json`` (the :class:`~storage.schema.SampleMeta`). Any WebDataset
reader opens them. Every reader here, the trainer's stream included, reads tars through
:func:`shard_samples` (WebDataset's tar expander and key grouping over fsspec streams), or, for random
access and counting, :func:`shard_index` (tar headers only). Which shards a stage folder holds is its
committed manifest's say (:func:`expand_shard_urls`), never a folder listing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
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
    """Rebuild a :class:`Sample` from the members of one tar group (or a raw sample of
    :func:`shard_samples`)."""
    record = json.loads(members["json"])
    meta = SampleMeta.model_validate(record)
    src = member(members, "src")
    tgt = member(members, "tgt")
    mask = members.get("mask.png") if record.get("mask_kind", "given") == "given" else None
    return Sample(
        meta=meta,
        source=decode_image(src),
        target=decode_image(tgt),
        mask=decode_image(mask, "L") if mask is not None else None,
    )


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
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size = len(data)
            info.mtime = 0  # the same samples make the same bytes, whenever and wherever they are written
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


# ---------------------------------------------------------------------------------------------- reading
#
# One reader for every shard of the project (ours, candidate and latent-cache shards, anyone's WebDataset):
# WebDataset's own tar expander and key grouping (``webdataset.tariterators``) over a stream that fsspec
# opens, so ``s3://``, ``memory://`` and local paths read alike and a sample is exactly what
# ``webdataset.WebDataset`` makes of it. WebDataset's ``tarfile_samples`` differs only in opening URLs with
# its own ``gopen``, which knows no fsspec file systems. WebDataset is imported where it reads: importing
# it imports torch, seconds that a command which never reads a shard should not pay.

ErrorHandler = Callable[[Exception], bool]


class ShardReadError(tarfile.ReadError):
    """A shard that cannot be read to its end: truncated, corrupt, not a tar, or holding a member twice.

    A :class:`tarfile.TarError`, so code that catches tar errors catches it; ``url`` names the shard and
    ``reason`` says what was wrong (the original exception is its ``__cause__``).
    """

    def __init__(self, url: str, reason: BaseException | str) -> None:
        self.url = url
        self.reason = reason if isinstance(reason, str) else _reason(reason)
        if isinstance(reason, BaseException):  # WebDataset appends its open stream to ``args``: an
            reason.args = tuple(
                a for a in reason.args if isinstance(a, (str, int, float))
            )  # unpicklable cause
        super().__init__(f"shard {url} is unreadable: {self.reason}")

    def __reduce__(self):
        return type(self), (self.url, self.reason)


def _reason(exn: BaseException) -> str:
    """What went wrong, without the stream objects WebDataset appends to an exception's ``args``."""
    first = exn.args[0] if exn.args else None
    text = first.split(" @ ", 1)[0] if isinstance(first, str) else (getattr(exn, "strerror", None) or "")
    return f"{type(exn).__name__}: {text}" if text else type(exn).__name__


def shard_samples(url: str, on_error: ErrorHandler | None = None) -> Iterator[dict]:
    """The samples of one shard, as WebDataset gives them: ``{"__key__", "__url__", <ext>: bytes}``.

    Consecutive members are grouped into samples by key, the file name up to its first dot: the member
    ``<key>.src.png`` is the sample's ``src.png``. Without ``on_error``, a shard that cannot be read to its
    end raises :class:`ShardReadError` after the samples before the damage; with it, each error is handed
    to ``on_error`` as a :class:`ShardReadError` and reading goes on while it returns True (WebDataset's
    handler rule: a damaged tar then ends the shard). A shard that cannot be opened raises the file
    system's ``OSError`` either way.
    """
    from webdataset import reraise_exception
    from webdataset.tariterators import group_by_keys, tar_file_expander

    filesystem, path = fs.get_fs(url)
    with filesystem.open(path, "rb") as stream:
        handler = reraise_exception if on_error is None else functools.partial(_handed, on_error, url)
        files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
        samples = group_by_keys(files, handler=handler)
        if on_error is not None:
            yield from samples
            return
        try:
            yield from samples
        except Exception as exn:  # anything the tar reader raises: the consumer's errors stay its own
            raise ShardReadError(url, exn) from exn


def _handed(on_error: ErrorHandler, url: str, exn: Exception) -> bool:
    error = ShardReadError(url, exn)
    error.__cause__ = exn
    return on_error(error)


def iter_shard_samples(urls: Iterable[str] | str, on_error: ErrorHandler | None = None) -> Iterator[dict]:
    """:func:`shard_samples` of every shard of ``urls`` (stage folders, shard files or folders of shards,
    resolved by :func:`expand_shard_urls`), one shard after another."""
    for url in expand_shard_urls(urls):
        yield from shard_samples(url, on_error)


def sample_members(raw: dict) -> dict[str, bytes]:
    """The tar members of one raw sample by extension, without WebDataset's ``__key__``/``__url__``."""
    return {name: value for name, value in raw.items() if not name.startswith("__")}


def member(members: dict, stem: str) -> bytes:
    """The bytes of the member ``<stem>.*`` (``src`` finds ``src.png`` or ``src.jpg``); KeyError if none."""
    for name, value in members.items():
        if name.split(".", 1)[0] == stem and isinstance(value, bytes):
            return value
    raise KeyError(
        f"sample has no {stem}.* member (has {sorted(n for n in members if not n.startswith('__'))})"
    )


def iter_tar_groups(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` for each sample of one shard (:func:`shard_samples`)."""
    for raw in shard_samples(url):
        yield raw["__key__"], sample_members(raw)


def iter_samples(urls: Iterable[str] | str) -> Iterator[Sample]:
    """Yield every sample of the given shards (files or directories of shards), in order."""
    for raw in iter_shard_samples(urls):
        yield decode_sample(raw)


def iter_metas(urls: Iterable[str] | str) -> Iterator[SampleMeta]:
    """Yield only the metadata of every sample, without reading its images (tar headers, then each
    sample's ``json`` member: :func:`shard_index`)."""
    for url in expand_shard_urls(urls):
        for member in shard_index(url, read=lambda ext: ext == "json"):
            if member.ext == "json" and member.data is not None:
                yield SampleMeta.model_validate_json(member.data)


@dataclass(frozen=True)
class TarMember:
    """Where one member's bytes lie in its shard (``data`` holds them when the index was asked to read it)."""

    key: str
    ext: str
    offset: int
    size: int
    data: bytes | None = None


def shard_index(url: str, read: Callable[[str], bool] | None = None) -> list[TarMember]:
    """The members of one shard from its tar headers, keyed as :func:`shard_samples` keys them; member data
    is skipped (seeked over), except that of members whose extension ``read`` accepts.

    For random access (one seek and one read per member later), for counting samples cheaply and for
    reading metadata alone (:func:`iter_metas`): tar headers need no WebDataset, whose import costs a
    command that only lists metadata the seconds of importing torch.
    """
    filesystem, path = fs.get_fs(url)
    out: list[TarMember] = []
    with filesystem.open(path, "rb") as handle:
        try:
            with tarfile.open(fileobj=handle, mode="r:") as tar:
                for info in tar:
                    key, ext = _key_and_extension(info.name) if info.isreg() else (None, None)
                    if key is None:
                        continue
                    ext = ext.lower()
                    data = None
                    if read is not None and read(ext):
                        extracted = tar.extractfile(info)
                        data = extracted.read() if extracted is not None else b""
                    out.append(TarMember(key, ext, info.offset_data, info.size, data))
        except (tarfile.TarError, EOFError) as exn:
            raise ShardReadError(url, exn) from exn
    return out


_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's rule: the key ends at the first dot


def _key_and_extension(name: str) -> tuple[str | None, str | None]:
    match = _MEMBER.match(name)
    return (match.group(1), match.group(2)) if match else (None, None)


def count_samples(url: str) -> int:
    """The samples of one shard, from its tar headers only (member data is not read)."""
    keys = [m.key for m in shard_index(url)]
    return sum(1 for i, key in enumerate(keys) if i == 0 or key != keys[i - 1])


def expand_shard_urls(urls: Iterable[str] | str) -> list[str]:
    """The shards to read for ``urls``: a stage folder (or its ``shards/``) stands for the shards its
    committed manifest parts list; shard files stay as they are (see :func:`manifest.reader_shards`)."""
    return resolve_shards(urls)
