"""Export shards as a Hugging Face ``datasets`` dataset that diffusers' InstructPix2Pix example trains on.

Two layouts, each loaded exactly as ``train_instruct_pix2pix.py`` loads its data:

- ``parquet`` (for ``--dataset_name DIR``): Parquet parts in the hub layout
  (``<out>/data/train-00000-of-0000N.parquet``), which ``datasets.load_dataset(DIR)`` opens;
- ``imagefolder`` (for ``--train_data_dir DIR``): the images as files (``<out>/images/<key>.src.png``,
  ``<key>.tgt.png``) and ``<out>/metadata.jsonl`` naming them in ``<column>_file_name`` keys, which
  ``datasets.load_dataset("imagefolder", data_dir=DIR)`` opens.

The columns default to the names the example script's arguments default to (:data:`DIFFUSERS_COLUMNS`),
so the printed command needs no column flags; other names can be given for other trainers. Images
keep their stored bytes and extension (no re-encoding); samples stream through, so memory stays
bounded. The shards come from :func:`ieiw.storage.shards.expand_shard_urls`: a stage folder (or its
``shards/``) means the shards its committed manifest parts list.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ieiw.model.reports import write_json
from ieiw.storage.schema import SampleMeta
from ieiw.storage.shards import expand_shard_urls, iter_tar_groups

# diffusers' examples/instruct_pix2pix/train_instruct_pix2pix.py: the defaults of its arguments
# --original_image_column ("input_image"), --edit_prompt_column ("edit_prompt") and
# --edited_image_column ("edited_image").
DIFFUSERS_COLUMNS = {
    "original_image": "input_image",
    "edit_prompt": "edit_prompt",
    "edited_image": "edited_image",
}

Layout = Literal["parquet", "imagefolder"]


@dataclass(frozen=True)
class Columns:
    """The names of the three columns a trainer reads (plus ``key`` and ``task``, always)."""

    original_image: str = DIFFUSERS_COLUMNS["original_image"]
    edit_prompt: str = DIFFUSERS_COLUMNS["edit_prompt"]
    edited_image: str = DIFFUSERS_COLUMNS["edited_image"]

    def features(self) -> datasets.Features:
        return datasets.Features(
            {
                self.original_image: datasets.Image(),
                self.edit_prompt: datasets.Value("string"),
                self.edited_image: datasets.Image(),
                "key": datasets.Value("string"),
                "task": datasets.Value("string"),
            }
        )


@dataclass
class ExportedPair:
    key: str
    task: str
    text: str
    source: tuple[str, bytes]  # (extension, bytes)
    target: tuple[str, bytes]


def _member(members: dict[str, bytes], stem: str) -> tuple[str, bytes]:
    for name, data in members.items():
        if name.split(".", 1)[0] == stem:
            return name.split(".", 1)[1], data
    raise KeyError(f"sample has no {stem}.* member (has {sorted(members)})")


def iter_pairs(shard_urls: Iterable[str], text_field: str = "instruction") -> Iterator[ExportedPair]:
    """Every sample with the text, images as their stored bytes; samples without the text are skipped."""
    for url in expand_shard_urls(list(shard_urls)):
        for _, members in iter_tar_groups(url):
            meta = SampleMeta.model_validate_json(members["json"])
            text = getattr(meta, text_field)
            if text:
                yield ExportedPair(
                    meta.key, str(meta.task), text, _member(members, "src"), _member(members, "tgt")
                )


def export_rows(
    shard_urls: Iterable[str], text_field: str = "instruction", columns: Columns | None = None
) -> Iterator[dict]:
    """The rows of the ``parquet`` layout (image ``path`` values carry their extension)."""
    columns = columns or Columns()
    for pair in iter_pairs(shard_urls, text_field):
        yield {
            columns.original_image: {"bytes": pair.source[1], "path": f"{pair.key}.src.{pair.source[0]}"},
            columns.edit_prompt: pair.text,
            columns.edited_image: {"bytes": pair.target[1], "path": f"{pair.key}.tgt.{pair.target[0]}"},
            "key": pair.key,
            "task": pair.task,
        }


def export_to_hf(
    shard_urls: Iterable[str],
    out_dir: str,
    rows_per_file: int = 5000,
    split: str = "train",
    text_field: str = "instruction",
    layout: Layout = "parquet",
    columns: Columns | None = None,
) -> dict:
    """Write the dataset in ``layout``; returns ``{"rows", "files", "layout", "train_command"}``."""
    columns = columns or Columns()
    if layout == "imagefolder":
        result = _export_imagefolder(shard_urls, Path(out_dir), text_field, columns)
    elif layout == "parquet":
        result = _export_parquet(shard_urls, Path(out_dir), rows_per_file, split, text_field, columns)
    else:
        raise ValueError(f"layout must be 'parquet' or 'imagefolder', got {layout!r}")
    result["layout"] = layout
    result["train_command"] = train_command(out_dir, layout, columns)
    write_json(Path(out_dir) / "export_info.json", result)
    return result


def train_command(out_dir: str, layout: Layout, columns: Columns) -> str:
    """The diffusers example command that trains on this export (column flags only if not the defaults)."""
    where = f"--dataset_name {out_dir}" if layout == "parquet" else f"--train_data_dir {out_dir}"
    flags = [
        f"--{flag} {value}"
        for flag, value, default in (
            ("original_image_column", columns.original_image, DIFFUSERS_COLUMNS["original_image"]),
            ("edit_prompt_column", columns.edit_prompt, DIFFUSERS_COLUMNS["edit_prompt"]),
            ("edited_image_column", columns.edited_image, DIFFUSERS_COLUMNS["edited_image"]),
        )
        if value != default
    ]
    return " ".join(["accelerate launch train_instruct_pix2pix.py", where, *flags])


def _export_parquet(
    shard_urls, out: Path, rows_per_file: int, split: str, text_field: str, columns: Columns
) -> dict:
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob(f"{split}-*-of-*.parquet"):  # an earlier export into the same folder
        stale.unlink()
    features = columns.features()
    schema = features.arrow_schema
    parts: list[Path] = []
    rows, buffer = 0, []
    for row in tqdm(export_rows(shard_urls, text_field, columns), desc="exporting", unit="sample"):
        buffer.append(features.encode_example(row))
        if len(buffer) == rows_per_file:
            parts.append(_write_part(data, len(parts), buffer, schema))
            rows, buffer = rows + len(buffer), []
    if buffer or not parts:
        parts.append(_write_part(data, len(parts), buffer, schema))
        rows += len(buffer)
    final = []
    for i, part in enumerate(parts):  # hub naming needs the total: train-00000-of-00003.parquet
        name = data / f"{split}-{i:05d}-of-{len(parts):05d}.parquet"
        part.rename(name)
        final.append(str(name))
    return {"rows": rows, "files": final}


def _export_imagefolder(shard_urls, out: Path, text_field: str, columns: Columns) -> dict:
    images = out / "images"
    if images.exists():  # an earlier export into the same folder
        shutil.rmtree(images)
    images.mkdir(parents=True)
    metadata = out / "metadata.jsonl"
    tmp = out / ".metadata.jsonl.tmp"
    rows = 0
    with tmp.open("w", encoding="utf-8") as handle:
        for pair in tqdm(iter_pairs(shard_urls, text_field), desc="exporting", unit="sample"):
            names = []
            for role, (extension, data) in (("src", pair.source), ("tgt", pair.target)):
                name = f"images/{pair.key}.{role}.{extension}"
                (out / name).write_bytes(data)
                names.append(name)
            record = {
                f"{columns.original_image}_file_name": names[0],
                columns.edit_prompt: pair.text,
                f"{columns.edited_image}_file_name": names[1],
                "key": pair.key,
                "task": pair.task,
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            rows += 1
    tmp.rename(metadata)
    return {"rows": rows, "files": [str(metadata)]}


def _write_part(folder: Path, index: int, rows: list[dict], schema: pa.Schema) -> Path:
    path = folder / f".part-{index:05d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path
