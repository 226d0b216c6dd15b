"""Agreement between reviewers who finished the same sample.

Each reviewer's picks on a sample are a set of 0 to 2 candidate positions. Over samples with two
or more finished reviews this reports:

- ``mean_jaccard``: the mean over reviewer pairs of |A ∩ B| / |A ∪ B| (two empty sets agree: 1);
- ``exact_match``: the share of pairs with identical pick sets;
- ``fleiss_kappa``: Fleiss' kappa over the binary per-candidate decision (picked or not), with
  the number of raters allowed to vary per sample; ``None`` when chance agreement is total;
- the same Jaccard and exact match per reviewer pair.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations


@dataclass
class Agreement:
    samples: int = 0  # samples with at least two finished reviews
    pairs: int = 0
    mean_jaccard: float | None = None
    exact_match: float | None = None
    fleiss_kappa: float | None = None
    by_pair: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "samples": self.samples,
            "pairs": self.pairs,
            "mean_jaccard": self.mean_jaccard,
            "exact_match": self.exact_match,
            "fleiss_kappa": self.fleiss_kappa,
            "by_pair": self.by_pair,
        }


def jaccard(a: set[int], b: set[int]) -> float:
    union = a | b
    return 1.0 if not union else len(a & b) / len(union)


def agreement(votes: dict[str, dict[str, set[int]]], n_candidates: dict[str, int]) -> Agreement:
    """Agreement over ``votes`` (``{sample: {reviewer: picked positions}}``)."""
    report = Agreement()
    jaccards: list[float] = []
    exact: list[bool] = []
    pair_scores: dict[tuple[str, str], list[tuple[float, bool]]] = defaultdict(list)
    agreement_sum = 0.0
    items = 0
    picked_total = ratings_total = 0
    for sample, by_reviewer in votes.items():
        raters = len(by_reviewer)
        if raters < 2:
            continue
        report.samples += 1
        for (name_a, picks_a), (name_b, picks_b) in combinations(sorted(by_reviewer.items()), 2):
            score, same = jaccard(picks_a, picks_b), picks_a == picks_b
            jaccards.append(score)
            exact.append(same)
            pair_scores[(name_a, name_b)].append((score, same))
        for position in range(n_candidates[sample]):
            yes = sum(position in picks for picks in by_reviewer.values())
            no = raters - yes
            agreement_sum += (yes * (yes - 1) + no * (no - 1)) / (raters * (raters - 1))
            items += 1
            picked_total += yes
            ratings_total += raters
    report.pairs = len(jaccards)
    if not jaccards:
        return report
    report.mean_jaccard = sum(jaccards) / len(jaccards)
    report.exact_match = sum(exact) / len(exact)
    if items:
        share = picked_total / ratings_total
        chance = share**2 + (1 - share) ** 2
        observed = agreement_sum / items
        report.fleiss_kappa = None if chance >= 1.0 else (observed - chance) / (1 - chance)
    report.by_pair = {
        f"{a} & {b}": {
            "samples": len(scores),
            "mean_jaccard": sum(s for s, _ in scores) / len(scores),
            "exact_match": sum(e for _, e in scores) / len(scores),
        }
        for (a, b), scores in sorted(pair_scores.items())
    }
    return report
