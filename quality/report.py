"""The quality report a person looks at: score histograms, drop counts, dropped samples and a gallery.

:func:`write_report` writes, under ``report_url``:

- ``hist_<score>.png``: per score, one panel per task, the distribution before filtering (all
  scored candidates) and after (kept samples), with the policy's bounds drawn as lines;
- ``drops.csv`` and ``drops.png``: samples by drop reason and task;
- ``dropped.html``: thumbnails of dropped samples grouped by the rule that dropped them;
- ``gallery.html``: kept samples with their scores (the storage gallery);
- ``index.html``: all of the above on one page.

Pages are self-contained HTML (thumbnails inlined as base64) so they open anywhere. Everything is
read from committed data only: the final stage's manifest and committed shards, the candidate
stage's committed shards (:func:`ieiw.storage.manifest.reader_shards`), and the committed scores the
caller passes in.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import UnidentifiedImageError  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from ieiw.quality.policy import RULES, FilterPolicy  # noqa: E402
from ieiw.quality.scoring import FLOAT_SCORES, iter_groups_safely  # noqa: E402
from ieiw.storage import fs, manifest  # noqa: E402
from ieiw.storage.gallery import GALLERY_STYLE, sample_html, write_gallery  # noqa: E402
from ieiw.storage.shards import decode_sample, iter_samples  # noqa: E402


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def score_histograms(
    before: pd.DataFrame, after: pd.DataFrame, policy: FilterPolicy | None = None, bins: int = 40
) -> dict[str, bytes]:
    """``{score: PNG bytes}``: per task, the score's distribution before and after filtering."""
    out: dict[str, bytes] = {}
    tasks = sorted(before["task"].dropna().unique()) if len(before) else []
    for score in FLOAT_SCORES:
        if score not in before or before[score].notna().sum() == 0:
            continue
        figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3), squeeze=False)
        for axis, task in zip(axes[0], tasks, strict=True):
            values = before.loc[before["task"] == task, score].dropna().to_numpy()
            kept = (
                after.loc[after["task"] == task, score].dropna().to_numpy() if score in after else np.zeros(0)
            )
            if len(values):
                edges = np.histogram_bin_edges(values, bins=bins)
                axis.hist(values, bins=edges, color="#bbb", label=f"before ({len(values)})")
                axis.hist(kept, bins=edges, color="#2a6fdb", alpha=0.8, label=f"after ({len(kept)})")
                axis.legend(fontsize=7, loc="upper right")  # "best" is slow on large histograms
            if policy is not None:
                _bounds(axis, policy, task, score)
            axis.set_title(f"{task}", fontsize=10)
            axis.set_xlabel(score, fontsize=9)
        figure.suptitle(f"{score} per task, before and after filtering", fontsize=11)
        out[score] = _png(figure)
    return out


def _bounds(axis, policy: FilterPolicy, task: str, score: str) -> None:
    rules = policy.for_task(task)
    for rule in RULES:
        bound = getattr(rules, rule.field)
        if rule.score == score and bound is not None:
            axis.axvline(bound, color="#d33", linestyle="--", linewidth=1)


def drop_counts(final_manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows by outcome (``kept`` or the drop reason) and task, with counts."""
    if not len(final_manifest):
        return pd.DataFrame(columns=["outcome", "task", "count"])
    outcome = final_manifest["drop_reason"].where(~final_manifest["kept"], "kept").fillna("kept")
    frame = final_manifest.assign(outcome=outcome, task=final_manifest["task"].fillna("unknown"))
    counts = frame.groupby(["outcome", "task"]).size().reset_index(name="count")
    return counts.sort_values(["outcome", "task"]).reset_index(drop=True)


def drop_counts_png(counts: pd.DataFrame) -> bytes:
    table = counts.pivot_table(index="outcome", columns="task", values="count", aggfunc="sum", fill_value=0)
    figure, axis = plt.subplots(figsize=(8, 0.4 * max(len(table), 3) + 1))
    table.plot.barh(stacked=True, ax=axis)
    axis.set_xlabel("samples")
    axis.set_title("outcome of every candidate, by task")
    return _png(figure)


def dropped_page(
    candidate_shards: Iterable[str],
    final_manifest: pd.DataFrame,
    per_reason: int = 8,
    size: int = 192,
) -> str:
    """HTML of dropped samples by reason (up to ``per_reason`` each, read from the candidate shards)."""
    dropped = final_manifest[~final_manifest["kept"]]
    wanted: dict[str, str] = {}
    counts = dropped["drop_reason"].value_counts()
    for reason, group in dropped.groupby("drop_reason"):
        for key in group["key"].head(per_reason):
            wanted[key] = str(reason)
    scores = dict(zip(dropped["key"], dropped["scores"], strict=True))
    details = dict(zip(dropped["key"], dropped["drop_detail"], strict=True))
    shown: dict[str, list[str]] = {reason: [] for reason in counts.index}
    for url in manifest.resolve_shards(list(candidate_shards)):
        if len(wanted) == sum(len(v) for v in shown.values()):
            break
        for key, members in iter_groups_safely(url):
            if key not in wanted:
                continue
            reason = wanted[key]
            detail = html.escape(str(details.get(key) or ""))
            try:
                sample = decode_sample(members)
                sample.meta.scores = json.loads(scores.get(key) or "{}")
                block = sample_html(sample, size)
            except (KeyError, ValidationError, UnidentifiedImageError, OSError, ValueError) as error:
                problem = html.escape(f"key {key}: not displayable ({error})")
                block = f"<div class='pair'>{problem}</div>"
            shown[reason].append(f"<div class='meta'>{detail}</div>{block}")
    sections = []
    for reason, count in counts.items():
        items = shown.get(reason) or [f"<p class='meta'>{_undisplayable(dropped, reason)}</p>"]
        sections.append(
            f"<h2 id='{html.escape(reason)}'>{html.escape(reason)} ({count})</h2>{''.join(items)}"
        )
    toc = " · ".join(f"<a href='#{html.escape(r)}'>{html.escape(r)}</a> ({c})" for r, c in counts.items())
    return _page("Dropped samples by reason", f"<p>{toc}</p>{''.join(sections)}")


def _undisplayable(dropped: pd.DataFrame, reason: str) -> str:
    rows = dropped[dropped["drop_reason"] == reason].head(5)
    listed = "; ".join(f"{k}: {d}" for k, d in zip(rows["key"], rows["drop_detail"], strict=True))
    return html.escape(f"no images to show (unreadable candidates). {listed}")


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{GALLERY_STYLE} h2{{font-size:16px;margin-top:28px}}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_report(
    candidates_url: str,
    scores: pd.DataFrame,
    final_url: str,
    report_url: str,
    policy: FilterPolicy | None = None,
    gallery_limit: int = 60,
    per_reason: int = 8,
) -> dict:
    """Write every report file under ``report_url``; returns their URLs and the drop counts."""
    final = manifest.read_manifest(final_url)
    kept_keys = set(final.loc[final["kept"], "key"])
    ok = scores[scores["error"].isna()] if "error" in scores else scores
    after = ok[ok["key"].isin(kept_keys)]
    written: dict[str, str] = {}
    histograms = score_histograms(ok, after, policy)
    for score, png in histograms.items():
        url = fs.join(report_url, f"hist_{score}.png")
        fs.write_bytes_atomic(url, png)
        written[f"hist_{score}"] = url
    counts = drop_counts(final)
    fs.write_bytes_atomic(fs.join(report_url, "drops.csv"), counts.to_csv(index=False).encode())
    written["drops_csv"] = fs.join(report_url, "drops.csv")
    drops_png = drop_counts_png(counts) if len(counts) else None
    if drops_png:
        fs.write_bytes_atomic(fs.join(report_url, "drops.png"), drops_png)
        written["drops_png"] = fs.join(report_url, "drops.png")
    shards = manifest.reader_shards(candidates_url)
    written["dropped_html"] = fs.join(report_url, "dropped.html")
    fs.write_bytes_atomic(written["dropped_html"], dropped_page(shards, final, per_reason).encode())
    written["gallery_html"] = write_gallery(
        iter_samples(manifest.committed_shards(final_url)),
        fs.join(report_url, "gallery.html"),
        title="Kept samples with scores",
        limit=gallery_limit,
        intro=f"{len(kept_keys)} kept of {len(final)} candidates.",
    )
    figures = "".join(
        f"<h2>{html.escape(s)}</h2><img src='{_data_uri(png)}' style='max-width:100%'>"
        for s, png in histograms.items()
    )
    table = counts.to_html(index=False) if len(counts) else "<p>no candidates</p>"
    links = (
        "<p><a href='dropped.html'>dropped samples by reason</a> · "
        "<a href='gallery.html'>kept samples</a></p>"
    )
    body = links + f"<h2>outcomes</h2>{table}" + (f"<img src='{_data_uri(drops_png)}'>" if drops_png else "")
    written["index_html"] = fs.join(report_url, "index.html")
    fs.write_bytes_atomic(written["index_html"], _page("Quality report", body + figures).encode())
    return {"files": written, "counts": counts.to_dict(orient="records"), "histograms": histograms}
