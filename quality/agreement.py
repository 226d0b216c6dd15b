"""How well a judge's scores rank the edits people picked above the ones they did not.

Input: one row per candidate edit a person reviewed, with the judge's scores and how many of the
reviewers who finished its sample picked it (``votes`` of ``reviewers``). Per score:

- ``auc``: the probability that a picked candidate scores above a rejected one (ties count half),
  over all pairs of a picked and a rejected candidate (Mann-Whitney U / (n_picked * n_rejected));
- ``auc_within``: the same within each sample (a sample's picks against its own rejects), averaged
  over the samples that have both: what matters when the judge ranks the candidates of one source;
- ``spearman``: the rank correlation of the score with the share of reviewers who picked the edit.

0.5 is chance; a team can trust the judge on its data about as far as these go above it. Rows the
judge could not score (NaN) are left out and counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr


def auc(scores: Sequence[float], picked: Sequence[bool]) -> float | None:
    """The AUC of ``scores`` for telling ``picked`` from the rest (None without both kinds)."""
    values, labels = np.asarray(scores, dtype=float), np.asarray(picked, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return None
    ranks = rankdata(values)  # ties get their mean rank: a tie counts half
    u = ranks[labels].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (None when either side is constant or there are under 3 rows)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    value = spearmanr(a, b).statistic
    return None if math.isnan(value) else float(value)


@dataclass
class ScoreAgreement:
    score: str
    candidates: int  # reviewed candidates the judge scored
    picked: int
    rejected: int
    unscored: int  # reviewed candidates without this score (the judge failed on them)
    samples: int  # samples with both a picked and a rejected candidate
    auc: float | None
    auc_within: float | None
    spearman: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def judge_agreement(rows: pd.DataFrame, scores: Sequence[str]) -> list[ScoreAgreement]:
    """Agreement of each of ``scores`` with the picks in ``rows`` (columns ``key``, ``votes``,
    ``reviewers`` and the scores)."""
    out = []
    for score in scores:
        present = rows[rows[score].notna()] if score in rows else rows.iloc[0:0]
        picked = present["votes"] > 0
        share = present["votes"] / present["reviewers"].clip(lower=1)
        within = []
        for _, group in present.groupby("key"):
            value = auc(group[score], group["votes"] > 0)
            if value is not None:
                within.append(value)
        out.append(
            ScoreAgreement(
                score=score,
                candidates=int(len(present)),
                picked=int(picked.sum()),
                rejected=int((~picked).sum()),
                unscored=int(len(rows) - len(present)),
                samples=len(within),
                auc=auc(present[score], picked),
                auc_within=float(np.mean(within)) if within else None,
                spearman=spearman(present[score], share),
            )
        )
    return out
