"""Where a quality stage's worker commits, and on whose behalf: small enough to send to any worker."""

from __future__ import annotations

from dataclasses import dataclass

from ieiw.storage.stage_folder import StageWriter


@dataclass(frozen=True)
class StageTarget:
    """A stage folder held by a run: its URL, the run's fingerprint digest and lease holder."""

    stage: str
    url: str
    digest: str
    holder: str | None

    @classmethod
    def of(cls, writer: StageWriter) -> StageTarget:
        return cls(writer.stage, writer.url, writer.digest, writer.holder)
