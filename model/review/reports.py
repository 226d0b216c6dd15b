"""The whole review at a glance: progress per reviewer, votes and agreement, the picks to export.

Read-only queries over all reviewers; :class:`ieiw.model.review.store.ReviewStore` inherits them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import func, select

from ieiw.model.review.agreement import Agreement, agreement
from ieiw.model.review.database import ReviewDatabase
from ieiw.model.review.tables import Assignment, Candidate, Pick, Reviewer, ReviewSample


@dataclass
class Progress:
    """Where one reviewer stands."""

    reviewer: str
    assigned: int = 0
    done: int = 0
    skipped: int = 0
    picks: int = 0

    @property
    def reviewed(self) -> int:
        return self.done + self.skipped

    @property
    def remaining(self) -> int:
        return self.assigned - self.reviewed

    def as_dict(self) -> dict:
        return {**asdict(self), "reviewed": self.reviewed, "remaining": self.remaining}


@dataclass(frozen=True)
class PickedCandidate:
    """A candidate picked by at least one reviewer who finished the sample, for the export."""

    sample_key: str
    position: int
    instruction: str
    source_meta: dict | None
    seed: int
    text_guidance: float
    image_guidance: float
    steps: int
    checkpoint: str
    reviewers: tuple[str, ...]
    first_picked_at: datetime


class ReviewReports(ReviewDatabase):
    """Queries over the whole review (all reviewers, finished samples)."""

    def progress(self, reviewer_id: int | None = None) -> list[Progress]:
        """Assigned, done, skipped and picks per reviewer (all, or only ``reviewer_id``)."""

        def only(query):
            return query if reviewer_id is None else query.where(Reviewer.id == reviewer_id)

        with self._read() as session:
            table = {name: Progress(name) for name in session.scalars(only(select(Reviewer.name)))}
            for name, status, count in session.execute(
                only(
                    select(Reviewer.name, Assignment.status, func.count())
                    .join(Assignment, Assignment.reviewer_id == Reviewer.id)
                    .group_by(Reviewer.name, Assignment.status)
                )
            ):
                row = table[name]
                row.assigned += count
                if status == "done":
                    row.done = count
                elif status == "skipped":
                    row.skipped = count
            for name, count in session.execute(
                only(
                    select(Reviewer.name, func.count())
                    .join(Pick, Pick.reviewer_id == Reviewer.id)
                    .group_by(Reviewer.name)
                )
            ):
                table[name].picks = count
        return [table[name] for name in sorted(table)]

    def votes(self) -> tuple[dict[str, dict[str, set[int]]], dict[str, int]]:
        """Finished reviews: ``{sample key: {reviewer: {picked positions}}}`` and candidates per sample."""
        with self._read() as session:
            votes: dict[str, dict[str, set[int]]] = defaultdict(dict)
            sizes: dict[str, int] = {}
            for key, n, name in session.execute(
                select(ReviewSample.key, ReviewSample.n_candidates, Reviewer.name)
                .join(Assignment, Assignment.sample_id == ReviewSample.id)
                .join(Reviewer, Reviewer.id == Assignment.reviewer_id)
                .where(Assignment.status == "done")
            ):
                votes[key][name] = set()
                sizes[key] = n
            for key, name, position in session.execute(
                select(ReviewSample.key, Reviewer.name, Candidate.position)
                .join(Pick, Pick.sample_id == ReviewSample.id)
                .join(Reviewer, Reviewer.id == Pick.reviewer_id)
                .join(Candidate, Candidate.id == Pick.candidate_id)
            ):
                if name in votes.get(key, {}):
                    votes[key][name].add(position)
        return dict(votes), sizes

    def agreement(self) -> Agreement:
        """Agreement between reviewers over samples that two or more of them finished."""
        return agreement(*self.votes())

    def picked_candidates(self, min_votes: int = 1) -> list[PickedCandidate]:
        """Candidates picked by at least ``min_votes`` reviewers who finished their sample, in key order."""
        with self._read() as session:
            rows = session.execute(
                select(ReviewSample, Candidate, Reviewer.name, Pick.created_at)
                .join(Pick, Pick.sample_id == ReviewSample.id)
                .join(Candidate, Candidate.id == Pick.candidate_id)
                .join(Reviewer, Reviewer.id == Pick.reviewer_id)
                .join(
                    Assignment,
                    (Assignment.sample_id == Pick.sample_id) & (Assignment.reviewer_id == Pick.reviewer_id),
                )
                .where(Assignment.status == "done")
                .order_by(ReviewSample.key, Candidate.position, Reviewer.name)
            ).all()
            grouped: dict[tuple[str, int], list] = defaultdict(list)
            for sample, candidate, name, created in rows:
                grouped[(sample.key, candidate.position)].append((sample, candidate, name, created))
            out = []
            for (key, position), group in grouped.items():
                if len(group) < min_votes:
                    continue
                sample, candidate = group[0][0], group[0][1]
                out.append(
                    PickedCandidate(
                        sample_key=key,
                        position=position,
                        instruction=sample.instruction,
                        source_meta=sample.source_meta,
                        seed=candidate.seed,
                        text_guidance=candidate.text_guidance,
                        image_guidance=candidate.image_guidance,
                        steps=candidate.steps,
                        checkpoint=candidate.checkpoint,
                        reviewers=tuple(g[2] for g in group),
                        first_picked_at=min(g[3] for g in group),
                    )
                )
        return out

    def counts(self) -> dict[str, int]:
        """Rows per table (for tests, progress pages and the bench)."""
        with self._read() as session:
            return {
                table.__tablename__.removeprefix("review_"): session.scalar(
                    select(func.count()).select_from(table)
                )
                for table in (Reviewer, ReviewSample, Candidate, Assignment, Pick)
            }
