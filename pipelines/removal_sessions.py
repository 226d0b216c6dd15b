"""Multi-turn removal sessions: the objects of one image removed one after another.

One implementation serves every removal generator (PhraseCut's phrases, the grounded generator's found
objects). A :class:`Session` holds up to ``max_turns`` :class:`SessionRegion`: what a generator knows of
an object to remove (its own record id, phrase, provenance, the photo, the mask to inpaint). Turn 1
removes the first object from the photo, turn 2 the next one from turn 1's result, and so on; every turn
is a sample of its own, with its own mask and instruction, and carries ``session_id`` and ``turn``
(1, 2, ...) in its ``json``. The whole session is one more sample (``turn`` 0): the photo, "remove the A
and the B", the last result. With ``make_add_pairs`` the whole session reversed is an add session of its
own id: its turn 1 puts back the object removed last.

An object whose mask is mostly covered by earlier turns' masks (the same object named again, "cup" and
"white cup") is not a turn (:func:`plan_turns`): the generator makes it an ordinary pair on the photo, as
without sessions, with the same key. A turn whose inpainting fails, changes nothing, or fails the
generator's own check (the grounded generator's verifier) is dropped and the session goes on from the
image before it; a session left with one turn is that turn's ordinary pair. Inpainting (and the check) is
batched across the sessions of a batch, one call per turn index. Every result of a session, kept or
dropped, carries the session's ``record_id``, so a resumed build knows the session is done.

What differs between generators is a :class:`SessionMaker`'s: the check of a turn, the ordinary pair,
the instruction. :func:`session_results` is PhraseCut's sessions on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ieiw.pipelines.inpaint.base import Inpainter, InpaintError
from ieiw.pipelines.instructions.templates import a_phrase, render, the_phrase
from ieiw.pipelines.removal import (
    RemovalSettings,
    SessionSettings,
    generator_info,
    inpaint_all,
    inpaint_batch,
    inpaint_failed,
    mask_change,
    region_pairs,
)
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

# ------------------------------------------------------------------------------------------- the shapes


@dataclass
class SessionRegion:
    """An object to remove in a session, as every generator gives it."""

    record_id: str  # the object's own record (a PhraseCut task's; a photo's object: "<photo>#<phrase>")
    phrase: str
    provenance: Provenance  # its region id names it (a PhraseCut task id, a phrase)
    image: np.ndarray  # HxWx3 uint8: the photo (in a turn: the image so far)
    mask: np.ndarray  # HxW uint8, 0 or 255, already dilated: what is inpainted
    area_fraction: float
    raw_mask: np.ndarray | None = None  # before dilation (the overlap rule reads it)
    fields: dict[str, str] = field(default_factory=dict)  # the templates' fields; empty: {"phrase": phrase}
    details: dict[str, Any] = field(default_factory=dict)  # more fields of its samples' json
    origin: Any = None  # the generator's own record of it (what its ordinary pair is made from)

    def template_fields(self) -> dict[str, str]:
        return self.fields or {"phrase": self.phrase}

    def the(self) -> str:
        """``the <phrase>`` (or what the generator's fields say, "both red cups")."""
        return self.fields.get("the_phrase") or the_phrase(self.phrase)

    def a(self) -> str:
        """``a <phrase>`` (or what the generator's fields say, "two red cups")."""
        return self.fields.get("a_phrase") or a_phrase(self.phrase)


@dataclass
class Session:
    """The turns of one session, in order, and the record every result of it belongs to."""

    record_id: str
    regions: list[SessionRegion]


@dataclass
class Turn:
    """A turn made: the object removed from ``source`` (the image before it) into ``target``."""

    region: SessionRegion
    source: np.ndarray
    target: np.ndarray
    change: float  # mean absolute change inside the mask
    scores: dict[str, float] = field(default_factory=dict)  # what the generator's check measured


class SessionMaker:
    """What a removal generator brings to its sessions: its inpainter, its generator record and settings,
    the check of a turn (none by default), a one-turn session's ordinary pair, and the instruction (the
    templates by default)."""

    def __init__(
        self,
        inpainter: Inpainter,
        generator: GeneratorInfo,
        settings: SessionSettings,
        min_change: float,
        make_add_pairs: bool,
    ) -> None:
        self.inpainter = inpainter
        self.generator = generator
        self.settings = settings
        self.min_change = min_change
        self.make_add_pairs = make_add_pairs

    def check(self, turns: list[Turn]) -> list[Drop | None]:
        """Each turn's drop if it fails the generator's own check (it may record ``turn.scores``)."""
        return [None] * len(turns)

    def pair(self, turn: Turn) -> list[Result]:
        """The ordinary remove (and add) pair of a session's only turn (its source is the photo)."""
        raise NotImplementedError

    def instruction(
        self,
        task: Task,
        key: str,
        fields: Mapping[str, str],
        phrases: Sequence[str],
        provenance: Provenance,
    ) -> tuple[str, str, dict[str, str]]:
        """The instruction of a session sample, its source tag, and notes for its json (why a preferred
        way was not taken)."""
        text, source = render(str(task), key, **fields)
        return text, source, {}


def session_generator(generator: GeneratorInfo, settings: SessionSettings) -> GeneratorInfo:
    """What made a session's samples: the removal generator plus the session settings."""
    return generator.model_copy(update={"settings": {**generator.settings, "session": asdict(settings)}})


def join_phrases(phrases: list[str]) -> str:
    """``["the cup", "the dog", "the cat"]`` -> ``"the cup, the dog and the cat"``."""
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def plan_turns(
    regions: Sequence[SessionRegion], max_overlap: float
) -> tuple[list[SessionRegion], list[SessionRegion]]:
    """The regions that are turns, in order, and those whose (undilated) mask is covered more than
    ``max_overlap`` by earlier turns' masks (likely the same object named again: ordinary pairs)."""
    turns: list[SessionRegion] = []
    overlapping: list[SessionRegion] = []
    covered: np.ndarray | None = None
    for region in regions:
        raw = region.raw_mask if region.raw_mask is not None else region.mask
        if covered is not None:
            overlap = np.count_nonzero((raw > 127) & covered) / max(1, np.count_nonzero(raw > 127))
            if overlap > max_overlap:
                overlapping.append(region)
                continue
        covered = region.mask > 127 if covered is None else covered | (region.mask > 127)
        turns.append(region)
    return turns, overlapping


# ------------------------------------------------------------------------------------------- the turns


@dataclass
class _Plan:
    """One session on its way: the image so far and the turns made."""

    session: Session
    current: np.ndarray | None = None
    kept: list[Turn] = field(default_factory=list)


def run_sessions(sessions: Sequence[Session], maker: SessionMaker) -> list[Result]:
    """Every sample and drop of a batch of sessions (see the module docstring)."""
    results: list[Result] = []
    plans = [_Plan(s) for s in sessions if s.regions]
    for index in range(max((len(p.session.regions) for p in plans), default=0)):
        active = [p for p in plans if index < len(p.session.regions)]
        inputs = [_on_image(p.session.regions[index], p.current) for p in active]
        targets = inpaint_batch(maker.inpainter, [r.image for r in inputs], [r.mask for r in inputs])
        made: list[tuple[_Plan, Turn]] = []
        for plan, region, target in zip(active, inputs, targets, strict=True):
            owner = plan.session.record_id
            if isinstance(target, InpaintError):
                results.append(_owned(inpaint_failed(region.record_id, region.provenance, target), owner))
                continue
            change = mask_change(region.image, target, region.mask)
            if change < maker.min_change:
                results.append(_no_change(owner, region, change))
                continue
            made.append((plan, Turn(region, region.image, target, change)))
        for (plan, turn), failed in zip(made, maker.check([t for _, t in made]), strict=True):
            if failed is not None:
                results.append(_owned(failed, plan.session.record_id))
                continue
            plan.kept.append(turn)
            plan.current = turn.target
    generator = session_generator(maker.generator, maker.settings)
    for plan in plans:
        owner = plan.session.record_id
        if len(plan.kept) == 1:  # one turn left: its source is the photo, an ordinary pair
            results += [_owned(r, owner) for r in maker.pair(plan.kept[0])]
        elif plan.kept:
            results += _session_samples(plan, generator, maker)
    return results


def _on_image(region: SessionRegion, image: np.ndarray | None) -> SessionRegion:
    """``region`` on the session's image so far (the photo before the first turn)."""
    return region if image is None else replace(region, image=image)


def _owned(result: Result, record_id: str) -> Result:
    """``result`` as a result of the session record ``record_id`` (what a resumed build looks for)."""
    if isinstance(result, Drop):
        result.record_id = record_id
    else:
        result.meta.record_id = record_id
    return result


def _no_change(owner: str, region: SessionRegion, change: float) -> Drop:
    return Drop(
        key=stable_key(owner, region.record_id, "inpaint_no_change"),
        reason="inpaint_no_change",
        detail=f"{region.provenance.region_id}: mean change {change:.3f} in mask",
        record_id=owner,
        task=str(Task.REMOVE),
        provenance=region.provenance,
    )


def _session_key(
    task: Task, provenance: Provenance, generator: GeneratorInfo, session_id: str, turn: int
) -> str:
    return stable_key(sample_key(task, provenance, generator), "session", session_id, turn)


def _whole_provenance(turns: list[Turn]) -> Provenance:
    """The first object's provenance, its region naming every object of the session."""
    first = turns[0].region.provenance
    extra = dict(first.extra)
    ann_ids = [a for t in turns for a in t.region.provenance.extra.get("ann_ids", [])]
    if ann_ids:
        extra["ann_ids"] = ann_ids
    region_id = "+".join(str(t.region.provenance.region_id) for t in turns)
    return first.model_copy(update={"region_id": region_id, "extra": extra})


def _session_samples(plan: _Plan, generator: GeneratorInfo, maker: SessionMaker) -> list[Sample]:
    """The remove session (its turns and the whole), and with add pairs the reversed add session."""
    turns = plan.kept
    n = len(turns)
    images = [turns[0].source] + [t.target for t in turns]  # images[i]: the photo after i turns
    phrases = [t.region.phrase for t in turns]
    remove_id = stable_key(
        "removal-session",
        str(Task.REMOVE),
        [t.region.record_id for t in turns],
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
        images: tuple[np.ndarray, np.ndarray, np.ndarray],
        provenance: Provenance,
        fields: Mapping[str, str],
        named: list[str],
        extra: dict[str, Any],
    ) -> Sample:
        source, target, mask = images
        key = _session_key(task, provenance, generator, session, turn)
        instruction, instruction_source, notes = maker.instruction(task, key, fields, named, provenance)
        meta = SampleMeta(
            key=key,
            task=task,
            instruction=instruction,
            instruction_source=instruction_source,
            provenance=provenance,
            generator=generator,
            record_id=owner,
            extra={**common, **extra, **notes},
            session_id=session,
            turn=turn,
        )
        return Sample(meta=meta, source=source, target=target, mask=mask)

    def details(t: Turn) -> dict[str, Any]:
        return {
            "phrase": t.region.phrase,
            **t.region.details,
            "area_fraction": round(t.region.area_fraction, 5),
            "mask_change": round(t.change, 3),
            **t.scores,
        }

    out = [
        sample(
            Task.REMOVE,
            remove_id,
            i,
            (images[i - 1], images[i], t.region.mask),
            t.region.provenance,
            t.region.template_fields(),
            [t.region.phrase],
            details(t),
        )
        for i, t in enumerate(turns, 1)
    ]
    whole = _whole_provenance(turns)
    if maker.settings.whole_session:
        out.append(
            sample(
                Task.REMOVE,
                remove_id,
                0,
                (images[0], images[-1], union),
                whole,
                {"the_phrase": join_phrases([t.region.the() for t in turns])},
                phrases,
                {},
            )
        )
    if not maker.make_add_pairs:
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
                (images[k], images[k - 1], t.region.mask),
                t.region.provenance,
                t.region.template_fields(),
                [t.region.phrase],
                {**details(t), "reverse_of": removed[k], "reverse_of_session": remove_id},
            )
        )
    if maker.settings.whole_session:
        out.append(
            sample(
                Task.ADD,
                add_id,
                0,
                (images[-1], images[0], union),
                whole,
                {"a_phrase": join_phrases([t.region.a() for t in reversed(turns)])},
                phrases[::-1],
                {"reverse_of": removed[0], "reverse_of_session": remove_id},
            )
        )
    return out


# ------------------------------------------------------------------------------------------- PhraseCut


class PhraseCutSessions(SessionMaker):
    """PhraseCut's sessions: the turn's ordinary pair is :func:`~ieiw.pipelines.removal.region_pairs`."""

    def __init__(self, inpainter: Inpainter, settings: RemovalSettings) -> None:
        if settings.sessions is None:
            raise ValueError("PhraseCut sessions need settings.sessions")
        generator = generator_info(inpainter, settings)
        super().__init__(
            inpainter, generator, settings.sessions, settings.min_change, settings.make_add_pairs
        )
        self.removal = settings

    def pair(self, turn: Turn) -> list[Result]:
        return region_pairs(turn.region.origin, turn.target, self.generator, self.removal)


def session_region(region: LoadedRegion) -> SessionRegion:
    """A loaded PhraseCut region as a session's region."""
    record = region.record
    return SessionRegion(
        record_id=record.record_id,
        phrase=record.phrase,
        provenance=record.provenance,
        image=region.image,
        mask=region.mask,
        area_fraction=region.area_fraction,
        raw_mask=region.raw_mask,
        origin=region,
    )


def session_results(
    sessions: list[PhraseCutSession], inpainter: Inpainter, settings: RemovalSettings
) -> list[Result]:
    """Every sample and drop of a batch of PhraseCut sessions (see the module docstring)."""
    if settings.sessions is None:
        raise ValueError("session_results needs settings.sessions")
    maker = PhraseCutSessions(inpainter, settings)
    results: list[Result] = []
    singles: list[tuple[str, LoadedRegion]] = []  # (the session owning it, a region made on the photo)
    planned: list[Session] = []
    for session in sessions:
        regions, dropped = _load(session, settings)
        results += dropped
        turns, overlapping = plan_turns([session_region(r) for r in regions], settings.sessions.max_overlap)
        singles += [(session.record_id, region.origin) for region in overlapping]
        planned.append(Session(session.record_id, turns))
    results += run_sessions(planned, maker)
    targets = inpaint_all(inpainter, [region for _, region in singles])
    for (owner, region), target in zip(singles, targets, strict=True):
        made = (
            [target] if isinstance(target, Drop) else region_pairs(region, target, maker.generator, settings)
        )
        results += [_owned(r, owner) for r in made]
    return results


def _load(session: PhraseCutSession, settings: RemovalSettings) -> tuple[list[LoadedRegion], list[Drop]]:
    """Load the session's photo once and each phrase's region on it, or their drops."""
    regions: list[LoadedRegion] = []
    drops: list[Drop] = []
    image = None
    for n, record in enumerate(session.records):
        loaded = load_region(record, settings.region, image)
        if isinstance(loaded, Drop):
            drops.append(_owned(loaded, session.record_id))
            if loaded.reason in ("missing_image", "corrupt_image"):  # the same photo for every phrase
                drops += [_owned(_photo_drop(loaded, o), session.record_id) for o in session.records[n + 1 :]]
                break
            continue
        image = loaded.image
        regions.append(loaded)
    return regions, drops


def _photo_drop(first: Drop, record: PhraseCutRecord) -> Drop:
    """The drop of another phrase of a photo that could not be read."""
    return keyed_drop(DATASET, record.record_id, first.reason, first.detail, record.provenance)
