"""A self-contained HTML page of samples (source | target | instruction) to open in a browser.

Beside each pair: its scores, the judge's verdict when a judge scored it (each criterion's score with
its reason, the judge model and rubric) and any other wording of its instruction (the judge's own,
with where it came from)."""

from __future__ import annotations

import base64
import html
import io
import itertools
from collections.abc import Iterable

import numpy as np
from PIL import Image

from ieiw.storage import fs
from ieiw.storage.schema import Sample

GALLERY_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:20px} .meta{color:#666;font-size:12px}
.pair{display:flex;gap:12px;align-items:flex-start;background:#fff;border:1px solid #ddd;
 border-radius:6px;padding:10px;margin:10px 0}
.pair figure{margin:0} .pair img{display:block;max-width:256px;height:auto;border-radius:4px}
figcaption{font-size:11px;color:#666;text-align:center}
.text{max-width:380px} .instruction{font-size:16px;font-weight:600;margin-bottom:6px}
.scores{font-family:monospace;font-size:12px;white-space:pre}
.judge{font-size:12px;margin-top:6px} .judge b{font-family:monospace}
.judge .low{color:#b22} .alt{font-size:13px;font-style:italic;margin:4px 0}
"""


def judge_html(verdict: dict, low: float = 5.0) -> str:
    """The judge's verdict (``SampleMeta.judge``): score and reason per criterion, model and rubric."""
    if not verdict:
        return ""
    scores, reasons = verdict.get("scores") or {}, verdict.get("reasons") or {}
    rows = "".join(
        f"<div class='{'low' if float(value) < low else ''}'><b>{html.escape(name)} {float(value):g}</b> "
        f"{html.escape(str(reasons.get(name, '')))}</div>"
        for name, value in scores.items()
    )
    source = f"{verdict.get('model', '')} · {verdict.get('rubric', '')}"
    return f"<div class='judge'>judge <span class='meta'>{html.escape(source)}</span>{rows}</div>"


def alternatives_html(alternatives: list[dict]) -> str:
    return "".join(
        f"<div class='alt'>{html.escape(a.get('text', ''))} "
        f"<span class='meta'>({html.escape(a.get('source', ''))})</span></div>"
        for a in alternatives
    )


def thumbnail_data_uri(image: np.ndarray, size: int = 256, quality: int = 85) -> str:
    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def sample_html(sample: Sample, size: int = 256) -> str:
    meta = sample.meta
    scores = "\n".join(f"{k}: {v:.3f}" for k, v in sorted(meta.scores.items()))
    figures = [("source", sample.source), ("target", sample.target)]
    if sample.mask is not None:
        figures.append(("mask", sample.mask))
    cells = "".join(
        f'<figure><img alt="{name}" src="{thumbnail_data_uri(img, size)}">'
        f"<figcaption>{name}</figcaption></figure>"
        for name, img in figures
    )
    prov = meta.provenance
    return (
        f'<div class="pair" data-key="{meta.key}">{cells}<div class="text">'
        f'<div class="instruction">{html.escape(meta.instruction)}</div>'
        f"{alternatives_html(meta.instruction_alternatives)}"
        f'<div class="meta">task {html.escape(str(meta.task))} · {html.escape(meta.instruction_source)}<br>'
        f"{html.escape(prov.dataset)} image {html.escape(prov.image_id)}"
        f"{' region ' + html.escape(prov.region_id) if prov.region_id else ''}<br>"
        f"{html.escape(meta.generator.name)} / {html.escape(meta.generator.backend)}"
        f"{' / ' + html.escape(meta.generator.model) if meta.generator.model else ''}<br>key {meta.key}</div>"
        f'<div class="scores">{html.escape(scores)}</div>{judge_html(meta.judge)}</div></div>'
    )


def render_gallery(
    samples: Iterable[Sample], title: str = "IEIW pairs", limit: int = 100, size: int = 256, intro: str = ""
) -> str:
    body = [sample_html(s, size) for s in itertools.islice(samples, limit)]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{GALLERY_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p class='meta'>{html.escape(intro)} {len(body)} samples shown.</p>{''.join(body)}</body></html>"
    )


def write_gallery(
    samples: Iterable[Sample],
    out_url: str,
    title: str = "IEIW pairs",
    limit: int = 100,
    size: int = 256,
    intro: str = "",
) -> str:
    """Write the gallery page to ``out_url`` (any fsspec URL); returns the URL."""
    fs.write_bytes_atomic(out_url, render_gallery(samples, title, limit, size, intro).encode("utf-8"))
    return out_url
