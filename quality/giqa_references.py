"""Reference features for a KNN-GIQA index, from image files: embed them into ``.npy`` shards.

The shards are what :func:`ieiw.quality.giqa_index.build_reference_index` reads, in the layout LAION
publishes its embeddings in; use this when the reference set is a folder of images instead.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ieiw.storage import fs

log = logging.getLogger(__name__)


def write_reference_embeddings(
    images: Iterator[np.ndarray | None],
    extract: Callable[[list[np.ndarray]], np.ndarray],
    out_url: str,
    shard_size: int = 10_000,
    batch_size: int = 64,
) -> dict:
    """Embed reference images into ``.npy`` shards under ``out_url``; ``None`` items count as corrupt.

    Returns ``{"shards": [...], "embedded": n, "corrupt": m}``.
    """
    shards: list[str] = []
    pending: list[np.ndarray] = []
    buffer: list[np.ndarray] = []
    embedded = corrupt = 0

    def flush_batch() -> None:
        if pending:
            buffer.append(np.asarray(extract(list(pending)), dtype=np.float32))
            pending.clear()

    def flush_shard() -> None:
        flush_batch()
        if buffer:
            data = io.BytesIO()
            np.save(data, np.concatenate(buffer))
            url = fs.join(out_url, f"reference-{len(shards):05d}.npy")
            fs.write_bytes_atomic(url, data.getvalue())
            shards.append(url)
            buffer.clear()

    for image in tqdm(images, desc="reference images", unit="img"):
        if image is None:
            corrupt += 1
            continue
        pending.append(image)
        embedded += 1
        if len(pending) >= batch_size:
            flush_batch()
        if embedded % shard_size == 0:
            flush_shard()
    flush_shard()
    fs.write_bytes_atomic(
        fs.join(out_url, "embeddings.json"),
        json.dumps({"embedded": embedded, "corrupt": corrupt, "shards": len(shards)}).encode(),
    )
    return {"shards": shards, "embedded": embedded, "corrupt": corrupt}


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def iter_reference_images(urls: Sequence[str] | str) -> Iterator[np.ndarray | None]:
    """Decode every image file under the given directories (or the files given); ``None`` if corrupt."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(urls, str):
        urls = [urls]
    files: list[str] = []
    for url in urls:
        if str(url).lower().endswith(IMAGE_SUFFIXES):
            files.append(url)
        else:
            for suffix in IMAGE_SUFFIXES:
                files.extend(fs.list_files(url, suffix))
    for url in sorted(set(files)):
        try:
            with Image.open(io.BytesIO(fs.read_bytes(url))) as image:
                yield np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as error:
            log.warning("reference image %s is unreadable: %s", url, error)
            yield None
