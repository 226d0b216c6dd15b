"""Evaluate a trained editing model on held-out shards with CLIP metrics, as a table and a grid.

Per sample: the model edits the source with the sample's instruction, then

- ``clip_direction``: cosine between the image edit direction (output minus source) and the text
  direction (target caption minus source caption) when the sample has captions (``extra``'s
  ``source_caption``/``target_caption``), else the instruction's embedding (``direction_basis``
  says which);
- ``clip_image``: source-to-output image similarity (does the edit keep the picture);
- ``clip_text``: output-to-target-caption similarity, when the target caption is known (replacement
  pairs); the summary's ``notes`` say how many samples had none, of which tasks, and why;
- ``clip_target``: output-to-reference-target image similarity.

The CLIP embedder (:class:`ieiw.quality.embeddings.ClipEmbedder`, or anything with ``embed_images``
and ``embed_texts`` returning unit rows) is loaded once by the caller.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from ieiw.model.inference import EditSettings, edit_image  # noqa: E402
from ieiw.model.references import check_clip  # noqa: E402
from ieiw.model.reports import write_json  # noqa: E402
from ieiw.quality import similarity  # noqa: E402
from ieiw.storage.models import ModelUnavailable  # noqa: E402
from ieiw.storage.schema import Sample  # noqa: E402
from ieiw.storage.shards import iter_samples  # noqa: E402

METRICS = ("clip_direction", "clip_image", "clip_text", "clip_target")


class Embedder(Protocol):
    def embed_images(self, images: list[np.ndarray]) -> np.ndarray: ...
    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


def load_clip(model: str, pretrained: str | None, config_file: str | None = None, device: str = "auto"):
    """The CLIP of the metrics (:class:`ieiw.quality.embeddings.ClipEmbedder`), looked up first
    (:func:`ieiw.model.references.check_clip`): a CLIP that is not there, or that open_clip cannot fetch
    or load, is a one-line :class:`~ieiw.storage.models.ModelUnavailable`."""
    from ieiw.quality.embeddings import ClipEmbedder, EmbedderConfig

    check_clip(model, pretrained, config_file)
    config = EmbedderConfig(model=model, pretrained=pretrained, model_config_file=config_file, device=device)
    try:
        return ClipEmbedder.from_config(config)
    except (RuntimeError, FileNotFoundError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelUnavailable(
            f"CLIP {model} {pretrained!r}: open_clip could not load it ({first[:300]}); give a local CLIP: "
            "--clip-model NAME --clip-pretrained FILE (--clip-config-file JSON for an architecture open_clip "
            "lacks)"
        ) from None


def captions(sample: Sample) -> tuple[str | None, str | None]:
    """The source and target captions a generator stored with the sample, if any."""
    extra = sample.meta.extra
    nested = extra.get("captions") if isinstance(extra.get("captions"), dict) else {}
    source = extra.get("source_caption") or nested.get("source")
    return source, extra.get("target_caption") or nested.get("target")


def score_chunk(embedder: Embedder, samples: list[Sample], outputs: list[np.ndarray]) -> list[dict]:
    """CLIP metrics of one chunk of (sample, edited output) pairs."""
    src = embedder.embed_images([s.source for s in samples])
    out = embedder.embed_images(outputs)
    tgt = embedder.embed_images([s.target for s in samples])
    caps = [captions(s) for s in samples]
    instr = embedder.embed_texts([s.meta.instruction for s in samples])
    rows = []
    for i, sample in enumerate(samples):
        src_cap, tgt_cap = caps[i]
        row = {"key": sample.key, "instruction": sample.meta.instruction, "task": str(sample.meta.task)}
        if src_cap and tgt_cap:
            text = embedder.embed_texts([src_cap, tgt_cap])
            direction = similarity.directional_similarity(src[i], out[i], text[0], text[1])
            row["clip_direction"] = float(direction[0])
            row["direction_basis"] = "captions"
        else:
            row["clip_direction"] = float(similarity.instruction_alignment(src[i], out[i], instr[i])[0])
            row["direction_basis"] = "instruction"
        row["clip_image"] = float(similarity.image_similarity(src[i], out[i])[0])
        row["clip_text"] = (
            float(similarity.text_image_similarity(out[i], embedder.embed_texts([tgt_cap])[0])[0])
            if tgt_cap
            else math.nan
        )
        row["clip_target"] = float(similarity.image_similarity(out[i], tgt[i])[0])
        rows.append(row)
    return rows


def evaluate(
    pipe,
    embedder: Embedder,
    shard_urls: Iterable[str],
    out_dir: str,
    settings: EditSettings,
    limit: int | None = None,
    chunk: int = 16,
    grid_rows: int = 8,
) -> dict:
    """Edit and score held-out samples; writes ``metrics.csv``, ``summary.json``/``.md``, ``grid.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    grid: list[tuple[Sample, np.ndarray]] = []
    for samples in tqdm(_chunks(iter_samples(shard_urls), chunk, limit), desc="evaluating", unit="chunk"):
        outputs = [edit_image(pipe, s.source, s.meta.instruction, settings) for s in samples]
        rows.extend(score_chunk(embedder, samples, outputs))
        grid.extend(list(zip(samples, outputs, strict=True))[: grid_rows - len(grid)])
    if not rows:
        raise ValueError("no samples in the evaluation shards")
    write_table(rows, out / "metrics.csv")
    summary = summarise(rows, settings)
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(summary_markdown(summary))
    plot_grid(grid, out / "grid.png")
    return summary


def summarise(rows: list[dict], settings: EditSettings) -> dict:
    summary: dict = {"samples": len(rows), "settings": settings.model_dump()}
    for metric in METRICS:
        values = [r[metric] for r in rows if not math.isnan(r[metric])]
        summary[metric] = {"mean": float(np.mean(values)) if values else None, "count": len(values)}
    summary["direction_from_captions"] = sum(r["direction_basis"] == "captions" for r in rows)
    summary["notes"] = notes(rows)
    return summary


def notes(rows: list[dict]) -> dict[str, str]:
    """Why a metric covers fewer samples than were evaluated, by metric."""
    uncaptioned = Counter(r["task"] for r in rows if math.isnan(r["clip_text"]))
    if not uncaptioned:
        return {}
    tasks = ", ".join(f"{task} {count}" for task, count in sorted(uncaptioned.items()))
    return {
        "clip_text": (
            f"n/a for {sum(uncaptioned.values())} of {len(rows)} samples ({tasks}): clip_text compares the "
            "edit with a caption of the target image, and only pairs whose generator captioned both images "
            "store one (replacement pairs: the captioner described the source and the target). Removal and "
            "add pairs, web edits and the vision tasks have an instruction but no caption of the result; "
            "their clip_direction is measured against the instruction instead (direction_basis: "
            "instruction)"
        )
    }


def summary_markdown(summary: dict) -> str:
    lines = [
        f"Evaluated {summary['samples']} samples.",
        "",
        "| metric | mean | samples |",
        "| --- | --- | --- |",
    ]
    explained = summary.get("notes", {})
    for metric in METRICS:
        mean = summary[metric]["mean"]
        shown = ("n/a" + (" (see below)" if metric in explained else "")) if mean is None else f"{mean:.4f}"
        lines.append(f"| {metric} | {shown} | {summary[metric]['count']} |")
    lines += [f"\n{metric}: {text}." for metric, text in explained.items()]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], path: Path) -> None:
    fields = ["key", "task", "instruction", "direction_basis", *METRICS]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: r[k] for k in fields} for r in rows)


def plot_grid(pairs: list[tuple[Sample, np.ndarray]], png: Path) -> None:
    """One row per sample: source, model output, reference target, titled with the instruction."""
    fig, axes = plt.subplots(len(pairs), 3, figsize=(7.5, 2.6 * len(pairs)), squeeze=False)
    for row, (sample, output) in enumerate(pairs):
        for col, (image, title) in enumerate(
            ((sample.source, "source"), (output, "model"), (sample.target, "reference"))
        ):
            ax = axes[row][col]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if col != 1 else sample.meta.instruction[:48], fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def _chunks(samples: Iterator[Sample], size: int, limit: int | None) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for i, sample in enumerate(samples):
        if limit is not None and i >= limit:
            break
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
