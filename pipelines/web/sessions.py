"""Web-edit threads that are sessions: an edit, the requester asking for more under it, an edit of that edit.

Where the requester answered a chosen edit A with another request (a reply that asks for an edit) and
someone answered that with an image B (:func:`~ieiw.pipelines.web.reddit_things.follow_up_candidates`),
the thread is a two-turn session: turn 1 is A's ordinary sample (original -> A, the post's instruction),
turn 2 is A -> B with the follow-up's instruction, and the whole session, original -> B with both
instructions, is one more sample (turn 0). B is checked against A as any edit against its original
(same scene, changed, similar shape); every follow-up that makes no sample is a drop with its reason.
"""

from __future__ import annotations

import numpy as np

from ieiw.pipelines.web.config import PairingConfig
from ieiw.pipelines.web.instruction import CleanedRequest, InstructionRewriter, make_instruction
from ieiw.pipelines.web.pairing import Rejected, check_edit, edit_provenance, pair_key
from ieiw.pipelines.web.posts import EditCandidate, WebPost
from ieiw.pipelines.web.state import DownloadRecord
from ieiw.storage.schema import Drop, GeneratorInfo, Result, Sample, SampleMeta, Task, stable_key


def both_instructions(first: str, second: str) -> str:
    """``"Remove the car."``, ``"Make the sky blue."`` -> ``"Remove the car, then make the sky blue."``"""
    second = second.strip()
    return f"{first.strip().rstrip('.!?')}, then {second[:1].lower()}{second[1:]}"


def follow_up_results(
    post: WebPost,
    original: np.ndarray,
    made: dict[str, Sample],
    follow_ups: list[tuple[EditCandidate, DownloadRecord]],
    instruction: CleanedRequest,
    settings: PairingConfig,
    generator: GeneratorInfo,
    rewriter: InstructionRewriter | None,
) -> list[Result]:
    """The session samples of a post's follow-up edits (``made``: its samples by candidate id); the turn-1
    samples they continue get their ``session_id`` and ``turn``."""
    results: list[Result] = []
    for candidate, record in follow_ups:
        results += _follow_up(
            post, original, made, candidate, record, instruction, settings, generator, rewriter
        )
    return results


def _follow_up(
    post: WebPost,
    original: np.ndarray,
    made: dict[str, Sample],
    candidate: EditCandidate,
    record: DownloadRecord,
    instruction: CleanedRequest,
    settings: PairingConfig,
    generator: GeneratorInfo,
    rewriter: InstructionRewriter | None,
) -> list[Result]:
    key = pair_key(post, candidate.candidate_id, generator)
    provenance = edit_provenance(post, candidate)
    provenance.extra["follows"] = candidate.follows

    def drop(reason: str, detail: str, scores: dict | None = None) -> list[Result]:
        return [
            Drop(
                key=key,
                reason=reason,
                detail=detail[:500],
                record_id=post.record_id,
                task=str(Task.WEB_EDIT),
                provenance=provenance,
                scores=scores or {},
            )
        ]

    first = made.get(candidate.follows)
    if first is None or first.meta.session_id:
        reason = "followup_of_unused_edit" if first is None else "followup_not_first"
        return drop(reason, f"{candidate.candidate_id} continues {candidate.follows}")
    outcome = check_edit(first.target, record, settings)
    if isinstance(outcome, Rejected):
        return drop(outcome.reason, outcome.detail, outcome.scores.as_dict() if outcome.scores else {})
    followed = make_instruction("", candidate.request, rewriter)
    if followed is None:
        return drop("instruction_empty", candidate.request)
    target, scores = outcome
    session = stable_key("web-session", post.record_id, candidate.follows, candidate.candidate_id)
    first.meta.session_id, first.meta.turn = session, 1
    extra = {
        "follows": candidate.follows,
        "request": candidate.request[:2000],
        "edit_sha256": record.sha256,
        "request_title": post.title,
    }
    out: list[Result] = []
    whole = both_instructions(instruction.instruction, followed.instruction)
    for turn, sample_key, text, text_source, source in (
        (2, key, followed.instruction, followed.source, first.target),
        (0, stable_key(key, "session", session, 0), whole, instruction.source, original),
    ):
        meta = SampleMeta(
            key=sample_key,
            task=Task.WEB_EDIT,
            instruction=text,
            instruction_source=text_source,
            provenance=provenance,
            generator=generator,
            record_id=post.record_id,
            scores={f"scene_{k}": v for k, v in scores.as_dict().items()},
            extra=extra,
            session_id=session,
            turn=turn,
        )
        out.append(Sample(meta=meta, source=source, target=target))
    return out
