"""Export shards as a Hugging Face ``datasets`` dataset for diffusers' InstructPix2Pix example.

Columns: ``original_image``, ``edit_prompt``, ``edited_image`` (the names the example's
``--original_image_column``, ``--edit_prompt_column`` and ``--edited_image_column`` default to),
plus ``key`` and ``task``. Written as Parquet parts in the hub layout
(``<out>/data/train-00000-of-0000N.parquet``), so ``datasets.load_dataset(out)`` and the example's
``--dataset_name <out>`` open it. Images keep their stored bytes (no re-encoding); samples stream
through, so memory stays bounded. The shards come from
:func:`ieiw.storage.shards.expand_shard_urls`: a stage folder (or its ``shards/``) means the shards its
committed manifest parts list, so a shard of a batch that never committed is not exported.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ieiw.storage.schema import SampleMeta
from ieiw.storage.shards import expand_shard_urls, iter_tar_groups

FEATURES = datasets.Features({
    "original_image": datasets.Image(),
    "edit_prompt": datasets.Value("string"),
    "edited_image": datasets.Image(),
    "key": datasets.Value("string"),
    "task": datasets.Value("string"),
})


def export_rows(shard_urls: Iterable[str], text_field: str = "instruction") -> Iterator[dict]:
    """One row per sample, images as their stored bytes; samples without the text are skipped."""
    for url in expand_shard_urls(list(shard_urls)):
        for key, members in iter_tar_groups(url):
            meta = SampleMeta.model_validate_json(members["json"])
            text = getattr(meta, text_field)
            if not text:
                continue
            src = next(v for k, v in members.items() if k.startswith("src."))
            tgt = next(v for k, v in members.items() if k.startswith("tgt."))
            yield {
                "original_image": {"bytes": src, "path": f"{key}.src"},
                "edit_prompt": text,
                "edited_image": {"bytes": tgt, "path": f"{key}.tgt"},
                "key": meta.key,
                "task": str(meta.task),
            }


def export_to_hf(shard_urls: Iterable[str], out_dir: str, rows_per_file: int = 5000,
                 split: str = "train", text_field: str = "instruction") -> dict:
    """Write the dataset; returns ``{"rows": n, "files": [...]}``."""
    data = Path(out_dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob(f"{split}-*-of-*.parquet"):  # an earlier export into the same folder
        stale.unlink()
    schema = FEATURES.arrow_schema
    parts: list[Path] = []
    rows, buffer = 0, []
    for row in tqdm(export_rows(shard_urls, text_field), desc="exporting", unit="sample"):
        buffer.append(FEATURES.encode_example(row))
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
    (Path(out_dir) / "export_info.json").write_text(json.dumps({"rows": rows, "files": final}, indent=1))
    return {"rows": rows, "files": final}


def _write_part(folder: Path, index: int, rows: list[dict], schema: pa.Schema) -> Path:
    path = folder / f".part-{index:05d}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path
