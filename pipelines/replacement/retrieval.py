"""Pick the reference object for a region: the most similar object of another image.

Neighbours are skipped when they come from the query's own image, when they are near-duplicates of
the query (similarity at or above the ceiling), below a floor, or (optionally) of the same class.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict

from ieiw.pipelines.replacement.index import ObjectIndex


class RetrievalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = 32  # neighbours looked at per region
    similarity_ceiling: float = 0.95  # at or above: a near-duplicate of the region itself
    min_similarity: float = 0.0
    different_label: bool = False  # require a reference of another class (where both are named)


@dataclass
class Match:
    row: int
    similarity: float
    rank: int  # position among the raw neighbours


@dataclass
class NoMatch:
    skipped: Counter  # why each neighbour was passed over

    @property
    def detail(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "empty index"


def retrieve(
    index: ObjectIndex,
    queries: np.ndarray,
    image_keys: list[int],
    labels: list[str | None],
    config: RetrievalConfig,
) -> list[Match | NoMatch]:
    """The reference of each query row, or why none of its ``k`` neighbours qualified."""
    if len(queries) == 0:
        return []
    similarities, rows = index.search(queries, config.k)
    out: list[Match | NoMatch] = []
    for sims, found, key, label in zip(similarities, rows, image_keys, labels, strict=True):
        query_label = index.label_id(label)
        skipped: Counter = Counter()
        match: Match | NoMatch | None = None
        for rank, (similarity, row) in enumerate(zip(sims.tolist(), found.tolist())):
            if row < 0:
                break
            if int(index.image_keys[row]) == key:
                skipped["same_image"] += 1
            elif similarity >= config.similarity_ceiling:
                skipped["near_duplicate"] += 1
            elif similarity < config.min_similarity:
                skipped["below_min_similarity"] += 1
            elif config.different_label and query_label >= 0 and int(index.label_ids[row]) == query_label:
                skipped["same_label"] += 1
            else:
                match = Match(int(row), float(similarity), rank)
                break
        out.append(match or NoMatch(skipped))
    return out
