"""Multi-turn sessions of the grounded generator, on the one session implementation of every removal
generator (:mod:`ieiw.pipelines.removal_sessions`).

The objects kept from one photo (past every gate, most confident first) are removed one after another,
at most ``sessions.max_turns`` a session: turn 2 from turn 1's result, each turn checked by the verifier
(a failure is an ``object_still_present`` drop, and the session goes on from the image before it), the
whole session as one more sample, and with ``make_add_pairs`` the reversed add session. An object whose
mask is mostly covered by an earlier turn's grown mask, a photo's last object left alone by
``max_turns``, and a photo with one object kept make ordinary pairs, as without sessions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ieiw.pipelines.grounded.chain import (
    Candidate,
    inpaint_and_verify,
    object_drop,
    removal_mask,
    verify_removals,
    wording_of,
)
from ieiw.pipelines.grounded.config import GroundedRemovalConfig
from ieiw.pipelines.grounded.pairs import Removal, generator_info, region_provenance, removal_pairs, wording
from ieiw.pipelines.grounded.wording import Wording
from ieiw.pipelines.inpaint.base import Inpainter
from ieiw.pipelines.removal_sessions import (
    Session,
    SessionMaker,
    SessionRegion,
    Turn,
    plan_turns,
    run_sessions,
)
from ieiw.quality.verifier import ObjectVerifier
from ieiw.storage.config import WorkerEnv
from ieiw.storage.schema import Drop, Provenance, Result, Task


class GroundedSessions(SessionMaker):
    """The grounded generator's part of a session: the verifier checks each turn, a one-turn session is
    the object's ordinary pair, and the instructions are its wording (templates or the LLM)."""

    def __init__(
        self,
        inpainter: Inpainter,
        config: GroundedRemovalConfig,
        verifier: ObjectVerifier,
        words: Wording,
    ) -> None:
        if config.sessions is None:
            raise ValueError("grounded sessions need config.sessions")
        generator = generator_info(config, inpainter, WorkerEnv.here())
        super().__init__(
            inpainter, generator, config.sessions.settings(), config.min_change, config.make_add_pairs
        )
        self.config = config
        self.verifier = verifier
        self.words = words

    def check(self, turns: list[Turn]) -> list[Drop | None]:
        removals = [(t.region.phrase, t.source, t.target, t.region.mask) for t in turns]
        out: list[Drop | None] = []
        for turn, verdict in zip(
            turns, verify_removals(self.verifier, removals, self.config.gates), strict=True
        ):
            turn.scores = verdict.scores
            candidate: Candidate = turn.region.origin
            if verdict.failed is None:
                out.append(None)
            else:
                count = len(candidate.found.boxes)
                out.append(
                    object_drop(candidate.photo, candidate.phrase, count, verdict.failed, verdict.scores)
                )
        return out

    def pair(self, turn: Turn) -> list[Result]:
        candidate: Candidate = turn.region.origin
        measures = {**candidate.details(), "mask_change": round(turn.change, 3), **turn.scores}
        count = len(candidate.found.boxes)
        removal = Removal(
            candidate.photo, candidate.phrase, count, turn.source, turn.target, turn.region.mask, measures
        )
        return list(removal_pairs(removal, self.generator, self.make_add_pairs, self.words))

    def instruction(
        self,
        task: Task,
        key: str,
        fields: Mapping[str, str],
        phrases: Sequence[str],
        provenance: Provenance,
    ) -> tuple[str, str, dict[str, str]]:
        return self.words(task, key, fields, phrases, provenance)


def session_region(candidate: Candidate, image: np.ndarray, dilation: int) -> SessionRegion:
    """A kept object as a session's region: its grown mask to fill, its own mask to measure overlap."""
    count = len(candidate.found.boxes)
    provenance = region_provenance(candidate.photo, candidate.phrase, count)
    return SessionRegion(
        record_id=f"{candidate.photo.record_id}#{provenance.region_id}",
        phrase=candidate.phrase,
        provenance=provenance,
        image=image,
        mask=removal_mask(candidate, dilation),
        area_fraction=candidate.measures.area,
        raw_mask=candidate.mask.astype(np.uint8) * 255,
        fields=wording(candidate.phrase, count),
        details={"instances": count, **candidate.details()},
        origin=candidate,
    )


def session_removal(
    kept: list[list[Candidate]],
    images: list[np.ndarray],
    models: Mapping[str, Any],
    config: GroundedRemovalConfig,
) -> list[Result]:
    """Each photo's kept objects (``kept[i]``: photo ``i``'s, most confident first) removed in sessions of
    at most ``max_turns``; the objects that are no turn of one made into ordinary pairs."""
    assert config.sessions is not None
    turns = config.sessions.max_turns
    sessions: list[Session] = []
    alone: list[Candidate] = []
    for group in kept:
        for start in range(0, len(group), turns):
            chunk = group[start : start + turns]
            if len(chunk) < 2:
                alone += chunk
                continue
            regions = [session_region(c, images[c.index], config.dilation) for c in chunk]
            planned, overlapping = plan_turns(regions, config.sessions.max_overlap)
            alone += [r.origin for r in overlapping]
            sessions.append(Session(chunk[0].photo.record_id, planned))
    words = wording_of(models, config)
    verifier = models["verifier"].detector(config.verifier)
    maker = GroundedSessions(models["inpainter"], config, verifier, words)
    return run_sessions(sessions, maker) + inpaint_and_verify(alone, images, models, config)
