"""Multi-turn removal sessions: the referred objects of one image removed one after another.

A :class:`~ieiw.pipelines.sources.phrasecut.PhraseCutSession` holds up to ``max_turns`` phrases of one
photo. Turn 1 removes the first object from the photo, turn 2 the next one from turn 1's result, and so
on; every turn is a sample of its own, with its own mask and instruction, and carries ``session_id`` and
``turn`` (1, 2, ...) in its ``json``. The whole session is one more sample (``turn`` 0): the photo, "remove
the A and the B", the last result. With ``make_add_pairs`` the whole session reversed is an add session
of its own id: its turn 1 puts back the object removed last.

A phrase whose region is mostly covered by earlier turns' masks (the same object named again, "cup" and
"white cup") is not a turn: it becomes an ordinary pair on the photo, as without sessions, with the same
key. A turn whose inpainting fails or changes nothing is dropped and the session goes on from the image
before it; a session left with one turn is that turn's ordinary pair. Inpainting is batched across the
sessions of a batch, one call per turn index. Every result of a session, kept or dropped, carries the
session's ``record_id``, so a resumed build knows the session is done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ieiw.pipelines.inpaint.base import Inpainter
from ieiw.pipelines.instructions.templates import a_phrase, render, the_phrase
from ieiw.pipelines.removal import RemovalSettings, generator_info, inpaint_all, mask_change, region_pairs
from ieiw.pipelines.sources.drops import keyed_drop
from ieiw.pipelines.sources.phrasecut import (
    DATASET,
    LoadedRegion,
    PhraseCutRecord,
    PhraseCutSession,
    load_region,
)
from ieiw.storage.schema import (
    Drop,
    GeneratorInfo,
    Provenance,
    Result,
    Sample,
    SampleMeta,
    Task,
    sample_key,
    stable_key,
)


@dataclass
class _Turn:
    region: LoadedRegion
    source: np.ndarray
    target: np.ndarray
    change: float


@dataclass
class _Plan:
    """One session on its way: its turns to make, the image so far and the turns made."""

    session: PhraseCutSession
    regions: list[LoadedRegion] = field(default_factory=list)
    current: np.ndarray | None = None
    kept: list[_Turn] = field(default_factory=list)


def session_generator(generator: GeneratorInfo, settings: RemovalSettings) -> GeneratorInfo:
    """What made a session's samples: the removal generator plus the session settings."""
    assert settings.sessions is not None
    return generator.model_copy(
        update={"settings": {**generator.settings, "session": asdict(settings.sessions)}}
    )


def join_phrases(phrases: list[str]) -> str:
    """``["the cup", "the dog", "the cat"]`` -> ``"the cup, the dog and the cat"``."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def session_results(
    sessions: list[PhraseCutSession], inpainter: Inpainter, settings: RemovalSettings
) -> list[Result]:
    """Every sample and drop of a batch of sessions (see the module docstring)."""
    if settings.sessions is None:
        raise ValueError("session_results needs settings.sessions")
    results: list[Result] = []
    singles: list[tuple[str, LoadedRegion]] = []  # (the session owning it, a region made on the photo)
    plans: list[_Plan] = []
    for session in sessions:
        plan, dropped, overlapping = _plan(session, settings)
        results += dropped
        singles += [(session.record_id, region) for region in overlapping]
        if plan.regions:
            plans.append(plan)
    for turn in range(settings.sessions.max_turns):
        active = [p for p in plans if turn < len(p.regions)]
        if not active:
            break
        inputs = [_on_image(p.regions[turn], p.current) for p in active]
        for plan, region, target in zip(active, inputs, inpaint_all(inpainter, inputs), strict=True):
            if isinstance(target, Drop):
                results.append(_owned(target, plan.session.record_id))
                continue
            change = mask_change(region.image, target, region.mask)
            if change < settings.min_change:
                results.append(_no_change(plan.session, region, change))
                continue
            plan.kept.append(_Turn(region, region.image, target, change))
            plan.current = target
    generator = generator_info(inpainter, settings)
    for plan in plans:
        owner = plan.session.record_id
        if len(plan.kept) == 1:  # one turn left: its source is the photo, an ordinary pair
            turn = plan.kept[0]
            results += [_owned(r, owner) for r in region_pairs(turn.region, turn.target, generator, settings)]
        elif plan.kept:
            results += _session_samples(plan, session_generator(generator, settings), settings)
    targets = inpaint_all(inpainter, [region for _, region in singles])
    for (owner, region), target in zip(singles, targets, strict=True):
        made = [target] if isinstance(target, Drop) else region_pairs(region, target, generator, settings)
        results += [_owned(r, owner) for r in made]
    return results


def _plan(
    session: PhraseCutSession, settings: RemovalSettings
) -> tuple[_Plan, list[Drop], list[LoadedRegion]]:
    """Load the session's photo once and each phrase's region on it: the turns, the drops, and the
    regions that overlap earlier turns (ordinary pairs)."""
    assert settings.sessions is not None
    plan, drops, overlapping = _Plan(session), [], []
    image = None
    covered: np.ndarray | None = None
    for record in session.records:
        loaded = load_region(record, settings.region, image)
        if isinstance(loaded, Drop):
            drops.append(_owned(loaded, session.record_id))
            if loaded.reason in ("missing_image", "corrupt_image"):  # the same photo for every phrase
                for other in session.records[session.records.index(record) + 1 :]:
                    drops.append(_owned(_photo_drop(loaded, other), session.record_id))
                break
            continue
        image = loaded.image
        raw = loaded.raw_mask if loaded.raw_mask is not None else loaded.mask
        if covered is not None:
            overlap = np.count_nonzero((raw > 127) & covered) / max(1, np.count_nonzero(raw > 127))
            if overlap > settings.sessions.max_overlap:
                overlapping.append(loaded)
                continue
        covered = loaded.mask > 127 if covered is None else covered | (loaded.mask > 127)
        plan.regions.append(loaded)
    return plan, drops, overlapping


def _photo_drop(first: Drop, record: PhraseCutRecord) -> Drop:
    """The drop of another phrase of a photo that could not be read."""
    return keyed_drop(DATASET, record.record_id, first.reason, first.detail, record.provenance)


def _on_image(region: LoadedRegion, image: np.ndarray | None) -> LoadedRegion:
    """``region`` on the session's image so far (the photo before the first turn)."""
    if image is None:
        return region
    return LoadedRegion(region.record, image, region.mask, region.area_fraction, region.raw_mask)


def _owned(result: Result, record_id: str) -> Result:
    """``result`` as a result of the session record ``record_id`` (what a resumed build looks for)."""
    if isinstance(result, Drop):
        result.record_id = record_id
    else:
        result.meta.record_id = record_id
    return result


def _no_change(session: PhraseCutSession, region: LoadedRegion, change: float) -> Drop:
    return Drop(
        key=stable_key(session.record_id, region.record.record_id, "inpaint_no_change"),
        reason="inpaint_no_change",
        detail=f"{region.record.task_id}: mean change {change:.3f} in mask",
        record_id=session.record_id,
        task=str(Task.REMOVE),
        provenance=region.record.provenance,
    )


def _session_key(
    task: Task, provenance: Provenance, generator: GeneratorInfo, session_id: str, turn: int
) -> str:
    return stable_key(sample_key(task, provenance, generator), "session", session_id, turn)


def _whole_provenance(turns: list[_Turn]) -> Provenance:
    """The first phrase's provenance, its region naming every phrase of the session."""
    first = turns[0].region.record.provenance
    extra = dict(first.extra)
    ann_ids = [a for t in turns for a in t.region.record.ann_ids]
    if ann_ids:
        extra["ann_ids"] = ann_ids
    region_id = "+".join(t.region.record.task_id for t in turns)
    return first.model_copy(update={"region_id": region_id, "extra": extra})


def _session_samples(plan: _Plan, generator: GeneratorInfo, settings: RemovalSettings) -> list[Sample]:
    """The remove session (its turns and the whole), and with add pairs the reversed add session."""
    assert settings.sessions is not None
    turns = plan.kept
    n = len(turns)
    images = [turns[0].source] + [t.target for t in turns]  # images[i]: the photo after i turns
    phrases = [t.region.record.phrase for t in turns]
    remove_id = stable_key(
        "removal-session",
        str(Task.REMOVE),
        [t.region.record.record_id for t in turns],
        generator.model_dump(mode="json"),
    )
    add_id = stable_key("removal-session", str(Task.ADD), remove_id)
    owner = plan.session.record_id
    union = np.maximum.reduce([t.region.mask for t in turns])
    common = {"session_turns": n, "session_phrases": phrases}

    def sample(
        task: Task,
        session: str,
        turn: int,
        source,
        target,
        mask,
        provenance: Provenance,
        fields: dict,
        extra: dict,
    ) -> Sample:
        key = _session_key(task, provenance, generator, session, turn)
        instruction, instruction_source = render(str(task), key, **fields)
        meta = SampleMeta(
            key=key,
            task=task,
            instruction=instruction,
            instruction_source=instruction_source,
            provenance=provenance,
            generator=generator,
            record_id=owner,
            extra={**common, **extra},
            session_id=session,
            turn=turn,
        )
        return Sample(meta=meta, source=source, target=target, mask=mask)

    def details(t: _Turn) -> dict:
        return {
            "phrase": t.region.record.phrase,
            "area_fraction": round(t.region.area_fraction, 5),
            "mask_change": round(t.change, 3),
        }

    out = [
        sample(
            Task.REMOVE,
            remove_id,
            i,
            images[i - 1],
            images[i],
            t.region.mask,
            t.region.record.provenance,
            {"phrase": t.region.record.phrase},
            details(t),
        )
        for i, t in enumerate(turns, 1)
    ]
    whole = _whole_provenance(turns)
    if settings.sessions.whole_session:
        out.append(
            sample(
                Task.REMOVE,
                remove_id,
                0,
                images[0],
                images[-1],
                union,
                whole,
                {"the_phrase": join_phrases([the_phrase(p) for p in phrases])},
                {},
            )
        )
    if not settings.make_add_pairs:
        return out
    removed = {s.meta.turn: s.key for s in out}
    for j in range(1, n + 1):  # add turn j puts back what remove turn n - j + 1 took away
        k = n - j + 1
        t = turns[k - 1]
        out.append(
            sample(
                Task.ADD,
                add_id,
                j,
                images[k],
                images[k - 1],
                t.region.mask,
                t.region.record.provenance,
                {"phrase": t.region.record.phrase},
                {**details(t), "reverse_of": removed[k], "reverse_of_session": remove_id},
            )
        )
    if settings.sessions.whole_session:
        out.append(
            sample(
                Task.ADD,
                add_id,
                0,
                images[-1],
                images[0],
                union,
                whole,
                {"a_phrase": join_phrases([a_phrase(p) for p in reversed(phrases)])},
                {"reverse_of": removed[0], "reverse_of_session": remove_id},
            )
        )
    return out
