"""Every read and write of a review: candidates in, reviewers and their tokens, queues, picks.

The database's unique constraints keep a pick from being stored twice and cap picks at two per
reviewer and sample (see :mod:`ieiw.model.review.tables`); a write that loses a race to another retries
once it sees the winner's row. Engine, sessions and retries are in :mod:`ieiw.model.review.database`;
progress, agreement and the picks to export in :mod:`ieiw.model.review.reports`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ieiw.model.candidate_shards import CandidateHeader
from ieiw.model.review.reports import ReviewReports
from ieiw.model.review.tables import MAX_PICKS, Assignment, Candidate, Pick, Reviewer, ReviewSample, utcnow


class ReviewError(Exception):
    """A request the store refuses; ``status`` is the HTTP status the app answers with."""

    status = 400


class NotFound(ReviewError):
    status = 404


class Invalid(ReviewError):
    status = 422


class Conflict(ReviewError):
    status = 409


@dataclass(frozen=True)
class ReviewerInfo:
    id: int
    name: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ReviewStore(ReviewReports):
    """A review's database: setup, one reviewer's queue and picks, and (inherited) the whole review.

    Thread-safe: each call opens its own short session.
    """

    # ------------------------------------------------------------------------------------ setup

    def import_candidates(self, headers: Iterable[CandidateHeader]) -> int:
        """Add the samples and candidates of candidate shards (headers); returns how many were new."""
        added = 0
        with self._write() as session:
            known = set(session.scalars(select(ReviewSample.key)))
            for header in headers:
                if header.key in known:
                    continue
                known.add(header.key)
                sample = ReviewSample(
                    key=header.key,
                    instruction=header.instruction,
                    n_candidates=len(header.settings),
                    source_meta=header.source_meta.model_dump(mode="json") if header.source_meta else None,
                )
                session.add(sample)
                session.flush()
                session.add_all(
                    Candidate(
                        sample_id=sample.id,
                        position=i,
                        seed=s.seed,
                        text_guidance=s.text_guidance,
                        image_guidance=s.image_guidance,
                        steps=s.steps,
                        checkpoint=s.checkpoint,
                    )
                    for i, s in enumerate(header.settings)
                )
                added += 1
        return added

    def add_reviewer(self, name: str) -> str:
        """Create reviewer ``name`` (or give them a new token); returns the token, shown only now."""
        name = name.strip()
        if not name or len(name) > 100:
            raise Invalid("a reviewer name has 1 to 100 characters")
        token = secrets.token_urlsafe(32)
        with self._write() as session:
            reviewer = session.scalar(select(Reviewer).where(Reviewer.name == name))
            if reviewer is None:
                session.add(Reviewer(name=name, token_hash=hash_token(token)))
            else:
                reviewer.token_hash = hash_token(token)
        return token

    def reviewer_by_token(self, token: str | None) -> ReviewerInfo | None:
        if not token:
            return None
        with self._read() as session:
            reviewer = session.scalar(select(Reviewer).where(Reviewer.token_hash == hash_token(token)))
            return ReviewerInfo(reviewer.id, reviewer.name) if reviewer else None

    def reviewers(self) -> list[str]:
        with self._read() as session:
            return list(session.scalars(select(Reviewer.name).order_by(Reviewer.name)))

    def assign(self, per_sample: int = 1, reviewers: list[str] | None = None) -> int:
        """Give each sample to ``per_sample`` distinct reviewers, least-loaded first; returns how many new.

        Samples that already have enough reviewers keep them, so rerunning after adding samples or
        reviewers only fills the gaps.
        """
        with self._write() as session:
            query = select(Reviewer).order_by(Reviewer.name)
            if reviewers is not None:
                query = query.where(Reviewer.name.in_(reviewers))
            people = list(session.scalars(query))
            if per_sample < 1 or per_sample > len(people):
                raise Invalid(f"cannot give each sample to {per_sample} of {len(people)} reviewers")
            existing = session.execute(select(Assignment.reviewer_id, Assignment.sample_id)).all()
            by_sample: dict[int, set[int]] = defaultdict(set)
            load: dict[int, int] = defaultdict(int)
            for reviewer_id, sample_id in existing:
                by_sample[sample_id].add(reviewer_id)
                load[reviewer_id] += 1
            added = 0
            for sample_id in session.scalars(select(ReviewSample.id).order_by(ReviewSample.id)):
                have = by_sample[sample_id]
                free = sorted((p for p in people if p.id not in have), key=lambda p: (load[p.id], p.name))
                for person in free[: max(per_sample - len(have), 0)]:
                    session.add(
                        Assignment(reviewer_id=person.id, sample_id=sample_id, position=load[person.id])
                    )
                    load[person.id] += 1
                    added += 1
        return added

    def prepare(self, headers: Iterable[CandidateHeader], per_sample: int = 1) -> dict:
        """Import candidates and fill the queues when there are enough reviewers; returns what was added."""
        imported = self.import_candidates(headers)
        reviewers = self.reviewers()
        assigned = self.assign(per_sample=per_sample) if len(reviewers) >= per_sample else 0
        return {"imported": imported, "assigned": assigned, "reviewers": reviewers}

    # ------------------------------------------------------------------------------------ one reviewer

    def _assigned(self, session: Session, reviewer_id: int, key: str) -> tuple[ReviewSample, Assignment]:
        row = session.execute(
            select(ReviewSample, Assignment)
            .join(Assignment, Assignment.sample_id == ReviewSample.id)
            .where(ReviewSample.key == key, Assignment.reviewer_id == reviewer_id)
        ).first()
        if row is None:
            raise NotFound("no such sample in your queue")
        return row[0], row[1]

    def queue(self, reviewer_id: int) -> list[dict]:
        """The reviewer's samples in order, with their status."""
        with self._read() as session:
            rows = session.execute(
                select(ReviewSample.key, Assignment.status)
                .join(Assignment, Assignment.sample_id == ReviewSample.id)
                .where(Assignment.reviewer_id == reviewer_id)
                .order_by(Assignment.position, Assignment.id)
            ).all()
        return [{"key": key, "status": status} for key, status in rows]

    def sample_view(self, reviewer_id: int, key: str) -> dict:
        """What the page shows: instruction, candidates, this reviewer's picks (in pick order) and status."""
        with self._read() as session:
            sample, assignment = self._assigned(session, reviewer_id, key)
            candidates = session.scalars(
                select(Candidate).where(Candidate.sample_id == sample.id).order_by(Candidate.position)
            ).all()
            picks = session.scalars(
                select(Pick.candidate_id)
                .where(Pick.reviewer_id == reviewer_id, Pick.sample_id == sample.id)
                .order_by(Pick.created_at, Pick.id)
            ).all()
            return {
                "key": sample.key,
                "instruction": sample.instruction,
                "status": assignment.status,
                "candidates": [{"id": c.id, "position": c.position} for c in candidates],
                "picks": list(picks),
                "max_picks": MAX_PICKS,
            }

    def add_pick(self, reviewer_id: int, key: str, candidate_id: int) -> tuple[dict, bool]:
        """Pick a candidate of an assigned sample; returns ``(pick, created)``. Picking twice is a no-op."""

        def operation(session: Session) -> tuple[dict, bool]:
            sample, _ = self._assigned(session, reviewer_id, key)
            candidate = session.get(Candidate, candidate_id)
            if candidate is None or candidate.sample_id != sample.id:
                raise Invalid("that candidate does not belong to this sample")
            mine = session.scalars(
                select(Pick).where(Pick.reviewer_id == reviewer_id, Pick.sample_id == sample.id)
            ).all()
            for pick in mine:
                if pick.candidate_id == candidate_id:
                    return _pick_dict(pick), False
            free = sorted(set(range(MAX_PICKS)) - {p.slot for p in mine})
            if not free:
                raise Conflict(f"at most {MAX_PICKS} picks per sample; undo one first")
            pick = Pick(
                reviewer_id=reviewer_id,
                sample_id=sample.id,
                candidate_id=candidate_id,
                slot=free[0],
                settings=_settings(candidate),
                created_at=utcnow(),
            )
            session.add(pick)
            session.flush()
            return _pick_dict(pick), True

        return self._retrying(operation)

    def remove_pick(self, reviewer_id: int, key: str, candidate_id: int) -> bool:
        """Withdraw the reviewer's own pick of a candidate; returns whether there was one."""
        with self._write() as session:
            sample, _ = self._assigned(session, reviewer_id, key)
            result = session.execute(
                delete(Pick).where(
                    Pick.reviewer_id == reviewer_id,
                    Pick.sample_id == sample.id,
                    Pick.candidate_id == candidate_id,
                )
            )
            return result.rowcount > 0

    def undo(self, reviewer_id: int, key: str) -> int | None:
        """Withdraw the reviewer's latest pick of the sample; returns its candidate id, or None."""
        with self._write() as session:
            sample, _ = self._assigned(session, reviewer_id, key)
            last = session.scalars(
                select(Pick)
                .where(Pick.reviewer_id == reviewer_id, Pick.sample_id == sample.id)
                .order_by(Pick.created_at.desc(), Pick.id.desc())
                .limit(1)
            ).first()
            if last is None:
                return None
            session.delete(last)
            return last.candidate_id

    def finish(self, reviewer_id: int, key: str, status: str = "done") -> None:
        """Mark the sample ``done`` (its 0 to 2 picks stand) or ``skipped`` (out of export and agreement)."""
        if status not in ("done", "skipped"):
            raise Invalid("status is done or skipped")
        with self._write() as session:
            _, assignment = self._assigned(session, reviewer_id, key)
            assignment.status = status
            assignment.reviewed_at = utcnow()


def _settings(candidate: Candidate) -> dict:
    return {
        "position": candidate.position,
        "seed": candidate.seed,
        "text_guidance": candidate.text_guidance,
        "image_guidance": candidate.image_guidance,
        "steps": candidate.steps,
        "checkpoint": candidate.checkpoint,
    }


def _pick_dict(pick: Pick) -> dict:
    return {
        "id": pick.id,
        "candidate_id": pick.candidate_id,
        "slot": pick.slot,
        "created_at": pick.created_at.isoformat() if pick.created_at else None,
    }
