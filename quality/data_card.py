"""The data card of a build: what it holds, where every sample came from, what it cost to make.

People who asked for IEIW wanted to know its sources, licenses and the GPU budget to rebuild it;
the card answers from the manifests, the stage summaries and the config that made the build.
"""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Mapping
from importlib import metadata

import pandas as pd

from ieiw.storage import fs, manifest

VERSIONED = ("ieiw-builder", "torch", "diffusers", "transformers", "open-clip-torch", "faiss-cpu", "prefect")


def _versions() -> str:
    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue  # optional package not installed here
    return ", ".join(found) + f", Python {platform.python_version()}"


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _seconds(value: float) -> str:
    return str(datetime.timedelta(seconds=round(float(value))))


def render_data_card(
    name: str,
    config_yaml: str,
    stage_urls: Mapping[str, str],
    summaries: Mapping[str, dict],
    final_urls: Mapping[str, str] | None = None,
    histograms: Mapping[str, list[str]] | None = None,
) -> str:
    """Markdown for the build ``name`` from its stage outputs (candidates and, if filtered, finals)."""
    frames = {stage: manifest.read_manifest(url) for stage, url in stage_urls.items()}
    finals = {stage: manifest.read_manifest(url) for stage, url in (final_urls or {}).items()}
    out = [
        f"# Data card: {name}",
        "",
        f"Built {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC with {_versions()}.",
        "",
    ]

    counts = []
    for stage, frame in frames.items():
        kept = frame[frame["kept"]] if len(frame) else frame
        final = finals.get(stage)
        final_kept = final[final["kept"]] if final is not None and len(final) else None
        for task, group in kept.groupby("task") if len(kept) else []:
            after = int((final_kept["task"] == task).sum()) if final_kept is not None else "not filtered"
            counts.append({"stage": stage, "task": task, "candidates": len(group), "final": after})
    out += ["## Samples per task", "", _table(pd.DataFrame(counts))]

    drops = []
    for stage, frame in [*frames.items(), *((f"{s} (filter)", f) for s, f in finals.items())]:
        if len(frame):
            for reason, count in frame.loc[~frame["kept"], "drop_reason"].value_counts().items():
                drops.append({"stage": stage, "reason": reason, "count": int(count)})
    out += ["## Dropped, by reason", "", _table(pd.DataFrame(drops))]

    kept_all = [f[f["kept"]] for f in (finals or frames).values() if len(f)]
    kept_frame = pd.concat(kept_all) if kept_all else pd.DataFrame(columns=manifest.MANIFEST_SCHEMA.names)
    sources = (
        (
            kept_frame.fillna({"license": "unknown"})
            .groupby(["dataset", "license"])
            .size()
            .reset_index(name="samples")
        )
        if len(kept_frame)
        else pd.DataFrame()
    )
    out += [
        "## Sources and licenses",
        "",
        "Every sample's `json` also names its image id, region and URL, so removals can be honoured.",
        "",
        _table(sources),
    ]

    models = (
        (
            kept_frame.fillna({"model": "-"})
            .groupby(["generator", "backend", "model"])
            .size()
            .reset_index(name="samples")
        )
        if len(kept_frame)
        else pd.DataFrame()
    )
    out += ["## Generators and models", "", _table(models)]

    cost = []
    for stage, summary in summaries.items():
        cost.append(
            {
                "stage": stage,
                "wall time": _seconds(summary.get("wall_seconds", 0.0)),
                "batch compute time": _seconds(summary.get("seconds", 0.0)),
                "device": summary.get("device", "cpu"),
                "batches": summary.get("batches", "-"),
            }
        )
    out += [
        "## Cost",
        "",
        "Wall time is the stage's elapsed time in this run (resumed work is not counted again); batch "
        "compute time sums the time batches spent in the stage (on the device shown).",
        "",
        _table(pd.DataFrame(cost)),
    ]

    if histograms:
        out += ["## Score histograms", ""]
        for stage, urls in histograms.items():
            out += [f"![{stage}: {url.rsplit('/', 1)[-1]}]({url})" for url in urls]
        out.append("")
    out += ["## Config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(out)


def write_data_card(url: str, markdown: str) -> str:
    fs.write_bytes_atomic(url, markdown.encode("utf-8"))
    return url


def summary_json(summaries: Mapping[str, dict]) -> str:
    return json.dumps(summaries, indent=2, default=str)
