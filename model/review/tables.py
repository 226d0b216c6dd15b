"""The review database: SQLAlchemy 2 tables, the same on SQLite and PostgreSQL.

Invariants held by the database itself, so concurrent requests cannot break them:

- a reviewer picks a candidate at most once: unique ``(reviewer_id, sample_id, candidate_id)``;
- at most two picks per reviewer and sample: each pick takes a ``slot`` 0 or 1 (a check
  constraint), unique per ``(reviewer_id, sample_id, slot)``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MAX_PICKS = 2
REVIEWER_ID = "review_reviewers.id"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it without the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Reviewer(Base):
    __tablename__ = "review_reviewers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ReviewSample(Base):
    """A source sample under review, with the candidate shard it came from."""

    __tablename__ = "review_samples"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    instruction: Mapped[str] = mapped_column(Text)
    n_candidates: Mapped[int] = mapped_column(Integer)
    source_meta: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class Candidate(Base):
    """One candidate edit of a sample, at display position ``position``, with its settings."""

    __tablename__ = "review_candidates"
    __table_args__ = (UniqueConstraint("sample_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("review_samples.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    text_guidance: Mapped[float] = mapped_column(Float)
    image_guidance: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    checkpoint: Mapped[str] = mapped_column(Text)


class Assignment(Base):
    """A sample in a reviewer's queue: ``pending``, ``done`` (0 to 2 picks kept) or ``skipped``."""

    __tablename__ = "review_assignments"
    __table_args__ = (
        UniqueConstraint("reviewer_id", "sample_id"),
        CheckConstraint("status IN ('pending', 'done', 'skipped')", name="assignment_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey(REVIEWER_ID, ondelete="CASCADE"), index=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("review_samples.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Pick(Base):
    """A reviewer's pick of a candidate, with the time and a copy of the candidate's settings."""

    __tablename__ = "review_picks"
    __table_args__ = (
        UniqueConstraint("reviewer_id", "sample_id", "candidate_id", name="pick_once"),
        UniqueConstraint("reviewer_id", "sample_id", "slot", name="pick_slot"),
        CheckConstraint(f"slot >= 0 AND slot < {MAX_PICKS}", name="pick_slot_range"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey(REVIEWER_ID, ondelete="CASCADE"), index=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("review_samples.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("review_candidates.id", ondelete="CASCADE"))
    slot: Mapped[int] = mapped_column(Integer)
    settings: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
