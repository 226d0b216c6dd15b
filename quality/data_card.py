"""The data card of a build: what it holds, where every sample came from, what it cost to make.

People who asked for IEIW wanted to know its sources, licenses and the GPU budget to rebuild it.
The card describes what was actually made, never the config file as it is now: counts, drops,
sources and generators come from the committed manifests, and settings, model identities and cost
from the records the stages wrote when they made their output (``stage.json``, read with
:func:`ieiw.storage.stage_folder.read_record`): the fingerprint's settings, models by content and
upstream digests, ``info`` such as where the model files were, and every run with its wall time,
compute time and device. The stages of one generator are its candidate stage, the score stage the
final stage read (recorded in its ``info``) and the final stage.
"""

from __future__ import annotations

import datetime
import json
import platform
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pandas as pd
import yaml

from ieiw.quality.card_sections import judge_section, sessions_section
from ieiw.quality.card_sections import markdown_table as _table
from ieiw.quality.config import default_scores_url
from ieiw.storage import fs, manifest
from ieiw.storage.identity import short
from ieiw.storage.stage_folder import read_record

VERSIONED = ("ieiw-builder", "torch", "diffusers", "transformers", "open-clip-torch", "faiss-cpu", "prefect")


@dataclass
class RecordedStage:
    """One stage folder that made part of the build, and what it recorded."""

    label: str
    url: str
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.record.get("fingerprint") or {}

    @property
    def digest(self) -> str | None:
        return self.fingerprint.get("digest")

    @property
    def info(self) -> dict[str, Any]:
        return self.record.get("info") or {}

    @property
    def runs(self) -> list[dict[str, Any]]:
        return list(self.record.get("runs") or [])


def _versions() -> str:
    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue  # optional package not installed here
    return ", ".join(found) + f", Python {platform.python_version()}"


def _seconds(value: float) -> str:
    return str(datetime.timedelta(seconds=round(float(value))))


def _recorded(label: str, url: str | None) -> RecordedStage | None:
    if not url:
        return None
    record = read_record(url)
    return RecordedStage(label, url, record) if record else None


def build_stages(
    stage_urls: Mapping[str, str],
    final_urls: Mapping[str, str] | None = None,
    extra_stages: Mapping[str, str] | None = None,
) -> tuple[list[RecordedStage], dict[str, RecordedStage], dict[str, RecordedStage]]:
    """The recorded stages of a build, in order (each generator's candidates, score, final; then the
    extras), with the candidate and final stages by generator. Folders without a record were never
    made by a stage and are left out; a final stage made from other candidates than the candidate
    stage now holds is noted as such."""
    ordered: list[RecordedStage] = []
    candidates: dict[str, RecordedStage] = {}
    finals: dict[str, RecordedStage] = {}
    for generator, url in stage_urls.items():
        made = _recorded(generator, url)
        if made is None:
            continue
        candidates[generator] = made
        ordered.append(made)
        final = _recorded(f"filter {generator}", (final_urls or {}).get(generator))
        scores_url = (final.info.get("scores_url") if final else None) or default_scores_url(url)
        score = _recorded(f"score {generator}", scores_url)
        for stage, reads in ((score, None), (final, score)):
            if stage is None:
                continue
            upstream = stage.fingerprint.get("upstream") or {}
            if upstream.get("candidates") not in (None, made.digest):
                stage.notes.append(
                    f"made from candidates {short(upstream['candidates'])}, which `{generator}` no longer "
                    f"holds (it holds {short(made.digest)}): rerun this stage"
                )
            if reads is not None and upstream.get("score") not in (None, reads.digest):
                stage.notes.append(f"made from other scores than `{reads.label}` holds: rerun this stage")
            ordered.append(stage)
        if final is not None:
            finals[generator] = final
    for label, url in (extra_stages or {}).items():
        made = _recorded(label, url)
        if made is not None:
            ordered.append(made)
    return ordered, candidates, finals


def _recorded_histograms(finals: Mapping[str, RecordedStage]) -> dict[str, list[str]]:
    """The score histograms the final stages' reports hold (their report URL is in their record)."""
    found: dict[str, list[str]] = {}
    for generator, final in finals.items():
        report = final.info.get("report_url")
        if report:
            pngs = [u for u in fs.list_files(report, ".png") if posixpath.basename(u).startswith("hist_")]
            if pngs:
                found[generator] = pngs
    return found


def render_data_card(
    name: str,
    stage_urls: Mapping[str, str],
    final_urls: Mapping[str, str] | None = None,
    histograms: Mapping[str, list[str]] | None = None,
    extra_stages: Mapping[str, str] | None = None,
    estimate: Mapping[str, Any] | None = None,
) -> str:
    """Markdown for the build ``name``: ``stage_urls`` are the generators' candidate stages,
    ``final_urls`` their final (filter) stages, ``extra_stages`` other stage folders whose records
    belong in the card (an object database). Only what the stages recorded and committed is used,
    and ``estimate``, the plan the build recorded when it started (``ieiw.flows.plan``), if any."""
    stages, candidates, finals = build_stages(stage_urls, final_urls, extra_stages)
    frames = {g: manifest.read_manifest(s.url) for g, s in candidates.items()}
    final_frames = {g: manifest.read_manifest(s.url) for g, s in finals.items()}
    out = [
        f"# Data card: {name}",
        "",
        f"Built {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC with {_versions()}.",
        "",
    ]
    if not stages:
        out += ["No stage of this build has recorded any output yet.", ""]

    counts = []
    for stage, frame in frames.items():
        kept = frame[frame["kept"]] if len(frame) else frame
        final = final_frames.get(stage)
        final_kept = final[final["kept"]] if final is not None and len(final) else None
        for task, group in kept.groupby("task") if len(kept) else []:
            if final is None:
                after: int | str = "not filtered"
            else:
                after = int((final_kept["task"] == task).sum()) if final_kept is not None else 0
            counts.append({"stage": stage, "task": task, "candidates": len(group), "final": after})
    out += ["## Samples per task", "", _table(pd.DataFrame(counts))]
    out += sessions_section(frames, final_frames)

    drops = []
    for stage, frame in [*frames.items(), *((f"{s} (filter)", f) for s, f in final_frames.items())]:
        if len(frame):
            for reason, count in frame.loc[~frame["kept"], "drop_reason"].value_counts().items():
                drops.append({"stage": stage, "reason": reason, "count": int(count)})
    out += ["## Dropped, by reason", "", _table(pd.DataFrame(drops))]

    kept_all = [f[f["kept"]] for g, f in frames.items() if len(f) and g not in final_frames]
    kept_all += [f[f["kept"]] for f in final_frames.values() if len(f)]
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

    generators = (
        (
            kept_frame.fillna({"model": "-"})
            .groupby(["generator", "backend", "model"])
            .size()
            .reset_index(name="samples")
        )
        if len(kept_frame)
        else pd.DataFrame()
    )
    models = []
    for stage in stages:
        paths = stage.info.get("models") or {}
        for role, identity in (stage.fingerprint.get("models") or {}).items():
            models.append(
                {
                    "stage": stage.label,
                    "model": role,
                    "identity": f"`{identity}`" if identity else "none",
                    "file on the building machine": f"`{paths[role]}`" if role in paths else "-",
                }
            )
    out += [
        "## Generators and models",
        "",
        _table(generators),
        "Models by identity (content digest, or hub id and revision), as the stages recorded them:",
        "",
        _table(pd.DataFrame(models)),
    ]

    out += [
        "## Cost",
        "",
        "Per stage, over every run that wrote its current output (a resumed run adds only what it did): "
        "wall time is the runs' elapsed time, compute time sums the time batches spent working (on the "
        "device shown).",
        "",
        _table(pd.DataFrame([_cost(stage) for stage in stages])),
    ]
    if estimate:
        out += _estimate_section(estimate, stages)

    out += judge_section(finals, candidates)

    shown = {**_recorded_histograms(finals), **dict(histograms or {})}
    if shown:
        out += ["## Score histograms", ""]
        for stage, urls in shown.items():
            out += [f"![{stage}: {url.rsplit('/', 1)[-1]}]({url})" for url in urls]
        out.append("")

    out += [
        "## Recorded settings",
        "",
        "What each stage recorded when it made its output: the settings of its fingerprint (batch sizes, "
        "devices and local paths are not among them), its models by content and the digests of the "
        "stages it read. This, not the config file as it is now, is what made the samples above.",
        "",
    ]
    for stage in stages:
        out += _settings_section(stage)
    return "\n".join(out)


def _cost(stage: RecordedStage) -> dict[str, Any]:
    runs = stage.runs
    wall = sum(float(r.get("wall_seconds") or 0.0) for r in runs)
    compute = sum(float(r.get("compute_seconds") or r.get("seconds") or 0.0) for r in runs)
    devices = sorted({str(r["device"]) for r in runs if r.get("device")})
    return {
        "stage": stage.label,
        "wall time": _seconds(wall),
        "compute time": _seconds(compute),
        "device": ", ".join(devices) or "-",
        "batches": len(manifest.completed_batches(stage.url)),
        "runs": len(runs),
    }


def _estimate_section(estimate: Mapping[str, Any], stages: list[RecordedStage]) -> list[str]:
    """The plan's GPU-hour estimate per stage, beside the compute time the stage measured."""
    measured = {stage.label: _cost(stage)["compute time"] for stage in stages}
    rows = []
    for stage in estimate.get("stages") or []:
        work = [w for w in stage.get("work") or [] if w.get("total_items") is not None]
        if not work:
            continue
        hours = stage.get("total_gpu_hours")
        rows.append(
            {
                "stage": stage["stage"],
                "GPU work": ", ".join(f"{w['total_items']:,} {w['operation']}" for w in work),
                "estimated GPU-hours": "-"
                if hours is None
                else f"{hours:,.2f}"
                if hours >= 0.01
                else f"{hours:.2g}",
                "measured compute time": measured.get(stage["stage"], "-"),
                "figures used": "; ".join(sorted({w["figure"] for w in work})),
            }
        )
    lines = [
        "## Estimated GPU cost",
        "",
        f"What the plan recorded when the build started ({estimate.get('created', '?')}) estimates for the "
        "whole of each stage, from measured throughputs (`ieiw build CONFIG --plan` prints it), beside the "
        "compute time the stage measured above.",
        "",
        _table(pd.DataFrame(rows)),
    ]
    return lines + [f"> **Note:** {note}" for note in estimate.get("notes") or []] + [""]


def _settings_section(stage: RecordedStage) -> list[str]:
    fingerprint = stage.fingerprint
    recorded = {
        "settings": fingerprint.get("settings") or {},
        "models": fingerprint.get("models") or {},
        "upstream": fingerprint.get("upstream") or {},
    }
    lines = [
        f"### {stage.label}",
        "",
        f"Stage `{stage.url}`, fingerprint `{stage.digest}` (schema {fingerprint.get('schema_version')}).",
        "",
    ]
    lines += [f"> **Note:** {note}" for note in stage.notes]
    if stage.notes:
        lines.append("")
    dumped = yaml.safe_dump(json.loads(json.dumps(recorded, default=str)), sort_keys=True, width=100)
    return [*lines, "```yaml", dumped.rstrip(), "```", ""]


def write_data_card(url: str, markdown: str) -> str:
    fs.write_bytes_atomic(url, markdown.encode("utf-8"))
    return url


def summary_json(summaries: Mapping[str, dict]) -> str:
    return json.dumps(summaries, indent=2, default=str)
