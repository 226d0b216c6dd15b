"""The data card's sections on what newer recipes add: multi-turn sessions counted by length, and the
VLM judge's and object verifier's checks (score histograms per task, drops per policy rule, judge
failures, rewritten instructions). :mod:`ieiw.quality.data_card` puts them in the card."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ieiw.quality.config import default_scores_url
from ieiw.storage import manifest

if TYPE_CHECKING:
    from ieiw.quality.data_card import RecordedStage


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
    from ieiw.quality.scoring import JUDGE_SCORES

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
    from ieiw.quality.policy import RULE_ORDER
    from ieiw.quality.scoring import JUDGE_SCORES, VERIFY_COLUMNS, read_scores
    from ieiw.quality.verifier import VERIFY_SCORES

    histograms, rules, failures, rewritten = [], [], [], []
    used = False  # a judge or a verifier scored some stage's pairs
    for generator, final in finals.items():
        made = candidates.get(generator)
        scores_url = final.info.get("scores_url") or (default_scores_url(made.url) if made else None)
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
