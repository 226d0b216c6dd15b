"""Photo sources that stream: a folder of images, or what img2dataset wrote.

Downloading the photos is img2dataset's job (``pip install img2dataset``)::

    img2dataset --url_list urls.parquet --input_format parquet --url_col url --caption_col caption \\
        --save_additional_columns '["license"]' --output_format webdataset --output_folder photos \\
        --image_size 1024 --resize_mode keep_ratio_largest --resize_only_if_bigger True

``--output_format webdataset`` writes ``00000.tar`` (``<key>.jpg``, ``<key>.txt`` and ``<key>.json``
holding ``url``, ``caption``, ``key``, ``status``, sizes and the additional columns), plus a metadata
``00000.parquet`` and ``00000_stats.json`` beside each; ``--output_format parquet`` writes ``00000.parquet``
with the same columns and the image bytes in a column named after ``--encode_format`` (``jpg``), empty for
a photo that failed to download. The shards are read with the project's one shard reader
(:func:`ieiw.storage.shards.shard_samples`), the Parquet files a row group at a time.

Every photo is a :class:`Photo` with a stable ``record_id``, ``<dataset>:<key>``: img2dataset's key, or a
file's path relative to the folder, never a machine's path. Its URL, caption and license (from the
metadata's ``license_fields``, else the source's ``license``) go into every sample's provenance.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ieiw.pipelines.grounded.config import PhotoSource
from ieiw.pipelines.sources.drops import keyed_drop
from ieiw.storage import fs
from ieiw.storage.schema import Drop, Provenance
from ieiw.storage.shards import ShardReadError, sample_members, shard_samples

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SUFFIXES = {"folder": IMAGE_SUFFIXES, "webdataset": (".tar",), "parquet": (".parquet",)}
HASH_FIELDS = ("sha256", "md5", "sha512")  # img2dataset's --compute_hash
PARQUET_ROWS = 256  # rows read at a time from a Parquet file


@dataclass
class Photo:
    """One photo: its id, its provenance, and where its pixels are (``data``: bytes read from a shard or a
    Parquet file; ``path``: relative to the source folder)."""

    record_id: str
    dataset: str
    key: str
    url: str | None = None
    caption: str | None = None
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    data: bytes | None = None
    path: str | None = None

    @property
    def provenance(self) -> Provenance:
        extra = {**self.extra, **({"caption": self.caption} if self.caption else {})}
        return Provenance(
            dataset=self.dataset, image_id=self.key, url=self.url, license=self.license, extra=extra
        )


def source_files(source: PhotoSource) -> list[tuple[str, str]]:
    """``(url, path relative to the source folder)`` of the files the source reads, sorted by the
    relative path; a single file given as ``path`` is itself."""
    suffixes = SUFFIXES[source.kind]
    filesystem, root = fs.get_fs(source.path)
    if filesystem.isfile(root):
        return [(source.path, os.path.basename(root))]
    prefix = source.path.split("://", 1)[0] + "://" if "://" in source.path else ""
    found = []
    for path in filesystem.find(root):
        relative = os.path.relpath(path, root).replace(os.sep, "/")
        name = relative.rsplit("/", 1)[-1]
        if name.startswith(".") or not name.lower().endswith(suffixes):
            continue
        found.append((prefix + path if prefix and prefix != "file://" else path, relative))
    return sorted(found, key=lambda item: item[1])


def iter_photos(source: PhotoSource) -> Iterator[Photo | Drop]:
    """The source's photos in a fixed order (drops for what cannot be used: a photo img2dataset failed to
    download, a shard that ends early)."""
    readers = {"folder": _folder_photos, "webdataset": _shard_photos, "parquet": _parquet_photos}
    yield from readers[source.kind](source)


def _folder_photos(source: PhotoSource) -> Iterator[Photo]:
    for _, relative in source_files(source):
        yield Photo(
            f"{source.dataset}:{relative}", source.dataset, relative, license=source.license, path=relative
        )


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, float) and np.isnan(value):
        return None
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.strip() or None


def _from_metadata(source: PhotoSource, key: str, meta: dict[str, Any], caption: Any = None) -> Photo:
    """A photo described by img2dataset's metadata (a shard's ``json`` or a Parquet row)."""
    license = next((t for name in source.license_fields if (t := _text(meta.get(name)))), None)
    extra = {name: meta[name] for name in HASH_FIELDS if _text(meta.get(name))}
    return Photo(
        record_id=f"{source.dataset}:{key}",
        dataset=source.dataset,
        key=key,
        url=_text(meta.get("url")),
        caption=_text(meta.get("caption")) or _text(caption),
        license=license or source.license,
        extra=extra,
    )


def _shard_photos(source: PhotoSource) -> Iterator[Photo | Drop]:
    """The samples of img2dataset's ``.tar`` shards (a failed download is never in a shard)."""
    images = (source.image_column, "jpg", "jpeg", "png", "webp")
    for url, relative in source_files(source):
        try:
            for raw in shard_samples(url):
                members = sample_members(raw)
                meta = json.loads(members["json"]) if "json" in members else {}
                key = _text(meta.get("key")) or raw["__key__"]
                photo = _from_metadata(source, key, meta, members.get("txt"))
                photo.data = next((members[m] for m in images if isinstance(members.get(m), bytes)), None)
                if photo.data is None:
                    yield _drop(photo, "no_image", f"{relative}: sample {key} holds no image member")
                    continue
                yield photo
        except ShardReadError as error:
            record = f"{source.dataset}:shard:{relative}"
            yield keyed_drop(source.dataset, record, "unreadable_shard", error.reason)


def _parquet_photos(source: PhotoSource) -> Iterator[Photo | Drop]:
    """The rows of img2dataset's ``.parquet`` output (``--output_format parquet``)."""
    import pyarrow.parquet as pq

    for url, relative in source_files(source):
        filesystem, path = fs.get_fs(url)
        with filesystem.open(path, "rb") as handle:
            table = pq.ParquetFile(handle)
            names = table.schema_arrow.names
            if source.image_column not in names:
                raise ValueError(
                    f"{url} has no {source.image_column!r} column (columns: {', '.join(names)}): is it "
                    "img2dataset's metadata beside its shards? Then set source.kind: webdataset"
                )
            if "key" not in names:
                raise ValueError(f"{url} has no 'key' column: not img2dataset's output")
            for batch in table.iter_batches(batch_size=PARQUET_ROWS):
                for row in batch.to_pylist():
                    photo = _from_metadata(source, str(row["key"]), row, row.get("txt"))
                    status = _text(row.get("status")) or "success"
                    data = row.get(source.image_column)
                    if status != "success" or not data:
                        detail = _text(row.get("error_message")) or status
                        yield _drop(photo, "not_downloaded", f"{relative}: {detail}")
                        continue
                    photo.data = data
                    yield photo


def _drop(photo: Photo, reason: str, detail: str) -> Drop:
    return keyed_drop(photo.dataset, photo.record_id, reason, detail, photo.provenance)


def load_photo(photo: Photo, source: PhotoSource) -> np.ndarray | Drop:
    """The photo's pixels (HxWx3 ``uint8`` RGB, turned upright by its EXIF orientation), or the drop that
    says why they cannot be read."""
    try:
        if photo.data is not None:
            data = photo.data
        else:
            filesystem, root = fs.get_fs(source.path)
            path = root if filesystem.isfile(root) else f"{root.rstrip('/')}/{photo.path}"
            with filesystem.open(path, "rb") as handle:
                data = handle.read()
    except FileNotFoundError:
        return _drop(photo, "missing_image", f"{photo.path} is no longer in the folder")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return _drop(photo, "corrupt_image", f"{photo.key}: {error}")


def count_photos(source: PhotoSource) -> int | None:
    """How many records the source holds, cheaply: a folder's image files, the rows of the Parquet files
    (from their footers), the successes img2dataset counted in each shard's ``_stats.json`` (None where
    a shard has none)."""
    files = source_files(source)
    if source.kind == "folder":
        return len(files)
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        total = 0
        for url, _ in files:
            filesystem, path = fs.get_fs(url)
            with filesystem.open(path, "rb") as handle:
                total += pq.ParquetFile(handle).metadata.num_rows
        return total
    total = 0
    for url, _ in files:
        filesystem, path = fs.get_fs(url.removesuffix(".tar") + "_stats.json")
        try:
            with filesystem.open(path, "rb") as handle:
                total += int(json.load(handle)["successes"])
        except (OSError, KeyError, ValueError, TypeError):
            return None
    return total
