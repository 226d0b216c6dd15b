"""The data card of a build: what it holds, where every sample came from, what it cost to make.

People who asked for IEIW wanted to know its sources, licenses and the GPU budget to rebuild it.
The card describes what was actually made, never the config file as it is now: counts, drops,
sources and generators come from the committed manifests, and settings, model identities and cost
from the records the stages wrote when they made their output (``stage.json``, read with
:func:`ieiw.storage.stage_folder.read_record`): the fingerprint's settings, models by content and
upstream digests, ``info`` such as where the model files were, and every run with its wall time,
compute time and device. The stages of one generator are its candidate stage, the score stage the
final stage read (recorded in its ``info``; else where the build's layout puts it) and the final stage.
Besides counts, sources and cost, the card tells what newer recipes add: multi-turn sessions counted by
length, and the VLM judge's and object verifier's checks (score histograms per task, drops per policy
rule, judge failures, rewritten instructions).
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

import numpy as np
import pandas as pd
import yaml

from ieiw.quality.policy import RULE_ORDER
from ieiw.quality.scoring import JUDGE_SCORES, VERIFY_COLUMNS, read_scores
from ieiw.quality.verifier import VERIFY_SCORES
from ieiw.storage import fs, manifest
from ieiw.storage.identity import short
from ieiw.storage.layout import scores_of
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
        scores_url = (final.info.get("scores_url") if final else None) or scores_of(url)
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
    out += ["## Samples per task", "", markdown_table(pd.DataFrame(counts))]
    out += sessions_section(frames, final_frames)

    drops = []
    for stage, frame in [*frames.items(), *((f"{s} (filter)", f) for s, f in final_frames.items())]:
        if len(frame):
            for reason, count in frame.loc[~frame["kept"], "drop_reason"].value_counts().items():
                drops.append({"stage": stage, "reason": reason, "count": int(count)})
    out += ["## Dropped, by reason", "", markdown_table(pd.DataFrame(drops))]

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
        markdown_table(sources),
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
        markdown_table(generators),
        "Models by identity (content digest, or hub id and revision), as the stages recorded them:",
        "",
        markdown_table(pd.DataFrame(models)),
    ]

    out += [
        "## Cost",
        "",
        "Per stage, over every run that wrote its current output (a resumed run adds only what it did): "
        "wall time is the runs' elapsed time, compute time sums the time batches spent working (on the "
        "device shown).",
        "",
        markdown_table(pd.DataFrame([_cost(stage) for stage in stages])),
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


# ---------------------------------------------------- sessions, the judge and the object checks


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table (``_none_`` when empty)."""
    if frame.empty:
        return "_none_\n"
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def session_lengths(frame: pd.DataFrame) -> pd.DataFrame:
    """Kept multi-turn sessions of a manifest by task and number of turns (``task, turns, sessions``)."""
    if not len(frame) or "session_id" not in frame.columns:
        return pd.DataFrame(columns=["task", "turns", "sessions"])
    turns = frame[frame["kept"] & frame["session_id"].notna() & (frame["turn"].fillna(-1) >= 1)]
    per_session = turns.groupby(["task", "session_id"]).size().reset_index(name="turns")
    return per_session.groupby(["task", "turns"]).size().reset_index(name="sessions")


def sessions_section(
    frames: Mapping[str, pd.DataFrame], final_frames: Mapping[str, pd.DataFrame]
) -> list[str]:
    """Sessions counted by length, before and after the filter (which may shorten or break a session)."""
    tables = []
    for stage, frame in frames.items():
        made = session_lengths(frame)
        if not len(made):
            continue
        if stage in final_frames:
            final = session_lengths(final_frames[stage]).rename(columns={"sessions": "final"})
            made = made.merge(final, on=["task", "turns"], how="outer").fillna(0)
        else:
            made["final"] = "not filtered"
        made.insert(0, "stage", stage)
        tables.append(made.astype({"turns": int, "sessions": int}))
    if not tables:
        return []
    rows = pd.concat(tables).sort_values(["stage", "task", "turns"])
    if rows["final"].map(lambda v: isinstance(v, float)).any():
        rows["final"] = rows["final"].map(lambda v: int(v) if isinstance(v, float) else v)
    return [
        "## Multi-turn sessions",
        "",
        "Successive edits of one image, counted by their number of turns: each turn is a sample "
        "(`session_id`, `turn` in its `json`), and the whole session one more (`turn` 0).",
        "",
        markdown_table(rows),
    ]


JUDGE_BINS = 10  # the judge's 0-10 scores in bins of one point (the last holds 9 to 10)


def _judge_histograms(scores: pd.DataFrame) -> pd.DataFrame:
    """Per task and judge score: how many pairs fell in each one-point bin, and the mean."""
    rows = []
    for task, group in scores.groupby("task"):
        for name in JUDGE_SCORES:
            values = group[name].dropna().to_numpy(dtype=float) if name in group else []
            if not len(values):
                continue
            counts, _ = np.histogram(values, bins=JUDGE_BINS, range=(0.0, float(JUDGE_BINS)))
            bins = {f"{b}-{b + 1}": int(c) for b, c in enumerate(counts)}
            rows.append(
                {"task": task, "score": name, **bins, "pairs": len(values), "mean": round(values.mean(), 2)}
            )
    return pd.DataFrame(rows)


def judge_section(finals: Mapping[str, RecordedStage], candidates: Mapping[str, RecordedStage]) -> list[str]:
    """The judge's and the object verifier's part of the card: the judge's score histograms per task,
    the pairs each policy rule dropped, the judge's failures and the instructions it rewrote."""
    histograms, rules, failures, rewritten = [], [], [], []
    used = False  # a judge or a verifier scored some stage's pairs
    for generator, final in finals.items():
        made = candidates.get(generator)
        scores_url = final.info.get("scores_url") or (scores_of(made.url) if made else None)
        if scores_url is None:
            continue
        try:
            scores = read_scores(scores_url)
        except (FileNotFoundError, OSError, ValueError):
            scores = pd.DataFrame()
        frame = manifest.read_manifest(final.url)
        dropped = frame.loc[~frame["kept"]] if len(frame) else frame
        for (reason, task), count in (
            dropped.groupby(["drop_reason", "task"]).size().items() if len(dropped) else []
        ):
            if reason in RULE_ORDER or str(reason).startswith(("missing_", "judge_", "verify_")):
                rules.append({"stage": generator, "rule": reason, "task": task, "dropped": int(count)})
        if scores.empty or "judge_overall" not in scores:
            continue
        ok = scores[scores["error"].isna()]
        judged = ok[ok[list(JUDGE_SCORES)].notna().any(axis=1) | ok["judge_error"].notna()]
        verified = ok[ok[list(VERIFY_SCORES)].notna().any(axis=1) | ok[VERIFY_COLUMNS[0]].notna()]
        if judged.empty and verified.empty:
            continue
        used = True
        table = _judge_histograms(judged)
        if len(table):
            histograms.append(table.assign(stage=generator))
        for (task, reason), count in judged.groupby(["task", "judge_error"]).size().items():
            failures.append({"stage": generator, "task": task, "judge failure": reason, "pairs": int(count)})
        kept = set(frame.loc[frame["kept"], "key"]) if len(frame) else set()
        for task, group in judged.groupby("task"):
            with_text = group["judge_instruction"].notna()
            rewritten.append(
                {
                    "stage": generator,
                    "task": task,
                    "judged": len(group),
                    "rewritten": int(with_text.sum()),
                    "rewritten and kept": int((with_text & group["key"].isin(kept)).sum()),
                }
            )
    if not used:
        return []
    out = [
        "## Judge and object checks",
        "",
        "The VLM judge's scores (0 to 10) per task, counted in one-point bins, from the score stage the "
        "final stage read; the histograms of every score, before and after filtering, are in the report.",
        "",
    ]
    if histograms:
        joined = pd.concat(histograms)
        out += [markdown_table(joined[["stage", *[c for c in joined.columns if c != "stage"]]])]
    out += ["Pairs each rule of the filter policy dropped (the first rule a pair fails names its drop):", ""]
    out += [markdown_table(pd.DataFrame(rules))]
    if failures:
        out += ["Pairs the judge gave no usable answer for:", "", markdown_table(pd.DataFrame(failures))]
    if any(r["rewritten"] for r in rewritten):
        out += [
            "Instructions the judge rewrote from the pair it saw (kept beside the original, "
            "`instruction_alternatives`; the trainer reads them with `text_field: rewritten_instruction`):",
            "",
            markdown_table(pd.DataFrame(rewritten)),
        ]
    return out


# ----------------------------------------------------------------------------- cost and settings


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
        markdown_table(pd.DataFrame(rows)),
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
