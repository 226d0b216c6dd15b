"""A preference pair on disk: our ``preference`` shards' members, and the Diffusion-DPO Hugging Face layout.

Our shards (written by :mod:`ieiw.model.preferences`) hold ``src.png`` (the source), ``tgt.png`` (the
chosen edit, so any reader of ours trains on it as an edit), ``rejected.png`` and the ``json``.

The Hugging Face layout is the column layout of diffusers' Diffusion-DPO example
(``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py`` and its SDXL twin): ``caption`` (the
text), the encoded bytes of ``jpg_0`` and ``jpg_1`` and ``label_0`` (1: ``jpg_0`` is preferred; 0: ``jpg_1``
is; Pick-a-Pic's 0.5 is a tie), plus ``input_image``, the source an edit preference needs (diffusers'
InstructPix2Pix name), in Parquet files (``<dataset>/data/<split>-00000-of-0000N.parquet``, which
``datasets.load_dataset`` opens). :func:`write_dpo_dataset` writes it from our committed shards;
:func:`parquet_samples` reads it back as the raw samples the trainer's stream takes from a shard
(:func:`ieiw.model.data.read_shard`), one Parquet file standing for one shard, so the trainer, its latent
cache and ``ieiw evaluate`` read either layout alike.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ieiw.model.reports import write_json
from ieiw.storage import fs, manifest
from ieiw.storage.layout import stage_card
from ieiw.storage.schema import GeneratorInfo, Provenance, SampleMeta, Task, stable_key
from ieiw.storage.shards import expand_shard_urls, iter_tar_groups

REJECTED = "rejected"  # the stem of a preference sample's rejected edit (``rejected.png``)
REJECTED_MEMBER = f"{REJECTED}.png"
PARQUET = ".parquet"

DPO_COLUMNS = {"caption": "caption", "image_0": "jpg_0", "image_1": "jpg_1", "label_0": "label_0"}
SOURCE_COLUMN = "input_image"  # ours: the source an edit preference needs (diffusers' InstructPix2Pix name)
DPO_SCHEMA = pa.schema(
    [
        (DPO_COLUMNS["caption"], pa.string()),
        (DPO_COLUMNS["image_0"], pa.binary()),
        (DPO_COLUMNS["image_1"], pa.binary()),
        (DPO_COLUMNS["label_0"], pa.float64()),
        (SOURCE_COLUMN, pa.binary()),
        ("key", pa.string()),
        ("source_key", pa.string()),
        ("chooser", pa.string()),
        ("choosers", pa.list_(pa.string())),
        ("margin", pa.float64()),
    ]
)
LAYOUT = "diffusion-dpo"  # the provenance dataset of a pair read from the layout without a key of ours


# ---------------------------------------------------------------------------------------------- writing


def iter_preference_rows(shard_urls: Iterable[str] | str) -> Iterator[dict]:
    """The rows of the Diffusion-DPO layout, one per committed preference sample. Which of the two images is
    ``jpg_0`` is a stable coin flip per pair (as in Pick-a-Pic, the label says which is preferred)."""
    for url in expand_shard_urls(shard_urls):
        for _, members in iter_tar_groups(url):
            meta = SampleMeta.model_validate_json(members["json"])
            if meta.task != Task.PREFERENCE:
                continue
            chosen, rejected = members["tgt.png"], members[REJECTED_MEMBER]
            first_is_chosen = hashlib.sha256(meta.key.encode()).digest()[0] % 2 == 0
            extra = meta.extra
            yield {
                DPO_COLUMNS["caption"]: meta.instruction,
                DPO_COLUMNS["image_0"]: chosen if first_is_chosen else rejected,
                DPO_COLUMNS["image_1"]: rejected if first_is_chosen else chosen,
                DPO_COLUMNS["label_0"]: 1.0 if first_is_chosen else 0.0,
                SOURCE_COLUMN: members["src.png"],
                "key": meta.key,
                "source_key": str(meta.provenance.extra.get("source_key", "")),
                "chooser": str(extra.get("chooser", "")),
                "choosers": [str(c) for c in extra.get("choosers", [])],
                "margin": extra.get("margin"),
            }


def write_dpo_dataset(stage_url: str, out_dir: str, split: str = "train", rows_per_file: int = 1000) -> dict:
    """The committed preferences of ``stage_url`` as Parquet parts in the hub layout
    (``<out>/data/<split>-00000-of-0000N.parquet``, which ``datasets.load_dataset(out)`` opens); returns
    ``{"rows", "files", "train_command"}``."""
    data = Path(out_dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob(f"{split}-*-of-*.parquet"):
        stale.unlink()
    parts: list[Path] = []
    buffer: list[dict] = []
    rows = 0

    def flush() -> None:
        path = data / f".part-{len(parts):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(buffer, schema=DPO_SCHEMA), path)
        parts.append(path)

    for row in iter_preference_rows(stage_url):
        buffer.append(row)
        if len(buffer) == rows_per_file:
            flush()
            rows, buffer = rows + len(buffer), []
    if buffer or not parts:
        flush()
        rows += len(buffer)
    files = []
    for i, part in enumerate(parts):
        final = data / f"{split}-{i:05d}-of-{len(parts):05d}.parquet"
        part.rename(final)
        files.append(str(final))
    command = (
        f"accelerate launch train_diffusion_dpo.py --dataset_name {out_dir} --dataset_split_name {split}"
    )
    result = {"rows": rows, "files": files, "train_command": command}
    write_json(Path(out_dir) / "export_info.json", result)
    card = stage_card(stage_url)
    if fs.exists(card):  # the pairs' data card (who chose them) as the dataset's card
        (Path(out_dir) / "README.md").write_bytes(fs.read_bytes(card))
    return result


# ---------------------------------------------------------------------------------------------- reading


def is_parquet(url: str) -> bool:
    return str(url).endswith(PARQUET)


def layout_files(url: str) -> list[str] | None:
    """The Parquet files of a Diffusion-DPO dataset at ``url``: a ``.parquet`` file itself, or a dataset
    folder's ``data/*.parquet`` (else its own ``*.parquet``), every split; None when ``url`` is none (a
    shard, a stage folder of ours, a folder of ``.tar`` shards). One split: name its files."""
    url = str(url).rstrip("/")
    if is_parquet(url):
        return [url]
    if url.endswith(".tar") or "{" in url or manifest.is_stage_folder(url):
        return None
    for folder in (fs.join(url, "data"), url):
        found = [f for f in fs.list_files(folder, PARQUET) if not posixpath.basename(f).startswith(".")]
        if found:
            return found
    return None


def count_rows(url: str) -> int:
    """The rows of one Parquet file, from its footer."""
    filesystem, path = fs.get_fs(url)
    with filesystem.open(path, "rb") as handle:
        return pq.ParquetFile(handle).metadata.num_rows


def _extension(data: bytes) -> str:
    """The member extension of encoded image bytes (readers find members by stem; this keeps names true)."""
    if data.startswith(b"\x89PNG"):
        return "png"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    return "jpg"


def _image(row: dict, column: str) -> bytes | None:
    value = row.get(column)
    if isinstance(value, dict):  # datasets' Image feature: {"bytes", "path"}
        value = value.get("bytes")
    return value if isinstance(value, bytes) and value else None


def row_sample(row: dict, url: str, index: int, drops: Counter) -> dict | None:
    """One row as the raw sample of a preference shard (``src.*``, ``tgt.*`` the preferred image,
    ``rejected.*``, ``json``); None for a tie or a row without a label (counted in ``drops``)."""
    label = row.get(DPO_COLUMNS["label_0"])
    if label not in (0, 1, 0.0, 1.0):
        drops["preference-tie" if label is not None else "missing-label"] += 1
        return None
    first, second = _image(row, DPO_COLUMNS["image_0"]), _image(row, DPO_COLUMNS["image_1"])
    chosen, rejected = (first, second) if label == 1 else (second, first)
    name = posixpath.basename(str(url))
    given = str(row.get("key") or "")
    # a key names tar members (``<key>.src.png``) in the latent cache: ours are hex; any other is hashed
    key = given if re.fullmatch(r"[A-Za-z0-9_-]+", given) else stable_key(LAYOUT, name, index, given)
    choosers = row.get("choosers") or []
    meta = SampleMeta(
        key=key,
        task=Task.PREFERENCE,
        instruction=str(row.get(DPO_COLUMNS["caption"]) or ""),
        provenance=Provenance(
            dataset=LAYOUT, image_id=f"{name}:{index}", extra={"source_key": str(row.get("source_key") or "")}
        ),
        generator=GeneratorInfo(name=LAYOUT, backend=str(row.get("chooser") or "")),
        extra={
            "chooser": str(row.get("chooser") or ""),
            "choosers": [str(c) for c in choosers],
            "margin": row.get("margin"),
        },
    )
    raw: dict = {"__key__": key, "__url__": url, "json": meta.model_dump_json().encode()}
    for stem, data in (("src", _image(row, SOURCE_COLUMN)), ("tgt", chosen), (REJECTED, rejected)):
        if data is not None:  # a missing image is the decoder's "missing-member"
            raw[f"{stem}.{_extension(data)}"] = data
    return raw


def parquet_samples(url: str, drops: Counter, rows_per_read: int = 64) -> Iterator[dict]:
    """The rows of one Parquet file of the layout as raw preference samples (:func:`row_sample`)."""
    filesystem, path = fs.get_fs(url)
    with filesystem.open(path, "rb") as handle:
        table = pq.ParquetFile(handle)
        columns = [c for c in table.schema_arrow.names if c in {*DPO_SCHEMA.names}]
        index = 0
        for batch in table.iter_batches(batch_size=rows_per_read, columns=columns):
            for row in batch.to_pylist():
                raw = row_sample(row, url, index, drops)
                index += 1
                if raw is not None:
                    yield raw
