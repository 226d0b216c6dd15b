"""Preference pairs for preference training: (source, instruction, chosen edit, rejected edit), and who chose.

Where the pairs come from (each a :class:`PreferencePair` naming two candidates of one candidate set):

- the review app's picks (:func:`human_pairs`): a reviewer who finished a sample with picks prefers each
  candidate they picked to each they did not. Over reviewers a pair counts the votes for it and against it
  (another reviewer picked the other one); it is kept when the net votes reach ``min_net_votes``. A sample
  finished with no pick, or skipped, says nothing;
- scores of the candidates (:func:`scored_pairs`), the hook for a judge or a reward model: anything that
  gives a candidate set's candidates a score (:class:`ScoredCandidates`, the JSON lines :func:`read_scored`
  reads, or the judge's verdicts of ``ieiw judge-candidates``, :func:`judged_candidates`) gives pairs whose
  scores differ by at least ``margin``, largest first. Each pair records its scorer's own name
  (``choosers``) and kind (``chooser``, :func:`chooser_of`), so people, a judge and a reward model stay
  apart in the data and in training (a shard set's ``choosers``).

:func:`export_preferences` writes them through :class:`PreferencesStage`, a ``samples`` stage run by the one
runner (its records are the pairs in order, ``<key>:<chosen>><rejected>`` the record id; its fingerprint
holds the candidates' identity, the pairs and how they were chosen; the same pairs exported again do
nothing).
Every pair is one WebDataset sample of task ``preference``: ``src.png`` (the source), ``tgt.png`` (the
chosen edit, so any reader of ours trains on it as an edit), ``rejected.png``, ``mask.png`` (where the
chosen edit differs from the source) and the flat ``json`` (instruction, provenance of the source sample,
both candidates' settings, and in ``extra`` who or what chose: ``chooser``, ``choosers``, votes, margin).
:func:`ieiw.model.dpo_layout.write_dpo_dataset` turns the committed shards into a Hugging Face dataset in
the column layout of diffusers' Diffusion-DPO example, plus the source image.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ieiw.model.candidate_shards import (
    CandidateHeader,
    CandidateIndex,
    MemberLocation,
    candidate_member,
    read_member,
)
from ieiw.model.dpo_layout import REJECTED_MEMBER, write_dpo_dataset
from ieiw.model.review.export import CandidateExportBase, held
from ieiw.storage import fs
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.images import decode_image, encode_image
from ieiw.storage.layout import stage_card
from ieiw.storage.runner import RunOptions, StageSummary, ThreadExecutor, run_stage
from ieiw.storage.schema import (
    Drop,
    EncodedSample,
    GeneratorInfo,
    Provenance,
    Result,
    Sample,
    SampleMeta,
    Task,
    sample_key,
    stable_key,
)
from ieiw.storage.shards import ShardSpec, difference_mask
from ieiw.storage.stage_folder import StageChanged

FORMAT = "ieiw-preferences/1"
STAGE = "preferences"
GENERATOR = "preference"
HUMAN = "human"


@dataclass(frozen=True)
class PreferencePair:
    """Candidate ``chosen`` of candidate set ``sample_key`` preferred to candidate ``rejected``."""

    sample_key: str
    chosen: int
    rejected: int
    chooser: str  # "human", or the kind of scorer (:func:`chooser_of`: "judge", "reward-model", "hand"...)
    choosers: tuple[str, ...] = ()  # the reviewers who preferred it, or the scorer's identity
    votes: int = 0  # reviewers who preferred ``chosen``
    against: int = 0  # reviewers who preferred ``rejected``
    margin: float | None = None  # the score difference, for scored pairs

    @property
    def pair_id(self) -> str:
        return f"{self.sample_key}:{self.chosen}>{self.rejected}"


@dataclass(frozen=True)
class ScoredCandidates:
    """The scores of one candidate set's candidates (higher is better) and what gave them: the input of
    :func:`scored_pairs`, for a judge or a reward model. ``chooser`` (the kind of scorer every pair it
    makes records) is by default :func:`chooser_of` the scorer's name."""

    sample_key: str
    scores: Mapping[int, float]  # candidate position -> score
    scorer: str  # what scored, by identity (a model and its rubric version, say)
    chooser: str = ""

    def __post_init__(self) -> None:
        if not self.scorer.strip():
            raise ValueError("a scorer needs a name (what scored: judge:<model>#<rubric>, a reward model...)")
        if not self.chooser:
            object.__setattr__(self, "chooser", chooser_of(self.scorer))


def chooser_of(scorer: str) -> str:
    """The kind of chooser a scorer is, from its own name: the part before its first ``:``
    (``judge:qwen2.5-vl#remove@2`` is a ``judge``, ``reward-model:pickscore`` a ``reward-model``), or
    the whole name (``hand``), so a reward model, a judge and people stay apart in the data card and in
    training (a shard set's ``choosers``)."""
    return scorer.strip().split(":", 1)[0].strip()


def human_pairs(
    votes: Mapping[str, Mapping[str, set[int]]],
    sizes: Mapping[str, int],
    min_net_votes: int = 1,
    max_pairs_per_sample: int | None = None,
) -> list[PreferencePair]:
    """Pairs from finished reviews (``ReviewStore.votes()``: ``{sample: {reviewer: picked positions}}`` and
    the candidates per sample); see the module docstring."""
    out: list[PreferencePair] = []
    for key in sorted(votes):
        prefer: dict[tuple[int, int], list[str]] = defaultdict(list)
        for reviewer, picked in sorted(votes[key].items()):
            if not picked:
                continue
            for chosen in sorted(picked):
                for rejected in range(sizes[key]):
                    if rejected not in picked:
                        prefer[(chosen, rejected)].append(reviewer)
        pairs = []
        for (chosen, rejected), reviewers in prefer.items():
            against = len(prefer.get((rejected, chosen), ()))
            if len(reviewers) - against >= min_net_votes:
                pairs.append(
                    PreferencePair(key, chosen, rejected, HUMAN, tuple(reviewers), len(reviewers), against)
                )
        pairs.sort(key=lambda p: (-(p.votes - p.against), p.chosen, p.rejected))
        out += pairs[:max_pairs_per_sample]
    return out


def scored_pairs(
    scored: Iterable[ScoredCandidates], margin: float = 1.0, max_pairs_per_sample: int | None = 4
) -> list[PreferencePair]:
    """Pairs from scored candidates: every two whose scores differ by at least ``margin``, the largest
    differences first, at most ``max_pairs_per_sample`` per candidate set."""
    if margin <= 0:
        raise ValueError("margin must be positive (equal scores prefer nothing)")
    out: list[PreferencePair] = []
    for item in sorted(scored, key=lambda s: s.sample_key):
        ranked = sorted(item.scores.items(), key=lambda kv: (-kv[1], kv[0]))
        pairs = [
            PreferencePair(
                item.sample_key, hi, lo, item.chooser, (item.scorer,), margin=round(s_hi - s_lo, 6)
            )
            for i, (hi, s_hi) in enumerate(ranked)
            for lo, s_lo in ranked[i + 1 :]
            if s_hi - s_lo >= margin
        ]
        pairs.sort(key=lambda p: (-(p.margin or 0.0), p.chosen, p.rejected))
        out += pairs[:max_pairs_per_sample]
    return out


def read_scored(path: str) -> list[ScoredCandidates]:
    """Scored candidates from JSON lines ``{"key": ..., "scores": {"<position>": score}, "scorer": ...}``
    (optionally ``"chooser"``; by default :func:`chooser_of` the scorer): the file a judge or reward model
    writes for :func:`scored_pairs`."""
    found = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                scores = {int(k): float(v) for k, v in row["scores"].items()}
                chooser = str(row.get("chooser") or "")
                found.append(ScoredCandidates(str(row["key"]), scores, str(row["scorer"]), chooser))
            except (ValueError, KeyError, TypeError, AttributeError) as bad:
                raise ValueError(f"{path}:{number}: not a scored candidate set ({bad})") from bad
    return found


def _number(value: Any) -> bool:
    return value is not None and not math.isnan(value)


def judged_candidates(judgements_url: str, score: str = "overall") -> list[ScoredCandidates]:
    """Scored candidates from the judge's verdicts on them (the judgements stage ``ieiw judge-candidates``
    writes): each candidate's ``judge_<score>``, a candidate the judge failed on left out; the scorer is the
    judge by identity and rubric, ``judge:<model>#<rubric>``."""
    from ieiw.model.review.judging import read_judgements
    from ieiw.quality.judge import JUDGE_SCORES

    column = f"judge_{score}"
    if column not in JUDGE_SCORES:
        raise ValueError(f"the judge gives no {score!r} score; it gives {[s[6:] for s in JUDGE_SCORES]}")
    found = []
    for key, group in read_judgements(judgements_url).groupby("key", sort=True):
        rows = [r for r in group.to_dict(orient="records") if _number(r[column])]
        if len(rows) < 2:
            continue  # one judged candidate prefers nothing
        judges = sorted({f"{r['judge_model']}#{r['judge_rubric']}" for r in rows})
        scores = {int(r["position"]): float(r[column]) for r in rows}
        found.append(ScoredCandidates(str(key), scores, "judge:" + "+".join(judges), "judge"))
    return found


# ---------------------------------------------------------------------------------------------- samples


def _setting(header: CandidateHeader, position: int) -> dict:
    return {"position": position, **header.settings[position].model_dump(mode="json")}


@dataclass(frozen=True)
class PairRecord:
    """One pair to write: its candidate set's header and where its three images lie (None: not there)."""

    record_id: str
    pair: PreferencePair
    header: CandidateHeader | None
    source: MemberLocation | None = None
    chosen: MemberLocation | None = None
    rejected: MemberLocation | None = None


def pair_record(pair: PreferencePair, index: CandidateIndex) -> PairRecord:
    """What writing ``pair`` needs of the candidate shards ``index`` covers."""
    header = index.headers.get(pair.sample_key)
    positions = range(len(header.settings)) if header is not None else range(0)
    if header is None or pair.chosen not in positions or pair.rejected not in positions:
        return PairRecord(pair.pair_id, pair, header)
    members = ("src.png", candidate_member(pair.chosen), candidate_member(pair.rejected))
    return PairRecord(pair.pair_id, pair, header, *(index.find(pair.sample_key, m) for m in members))


def preference_sample(record: PairRecord) -> Result:
    """The shard sample of one pair, or a drop when its candidates are not in the candidate shards."""
    pair, header = record.pair, record.header
    record_id = pair.pair_id
    source_meta = header.source_meta if header is not None else None
    if source_meta is not None:
        provenance = source_meta.provenance.model_copy(
            update={"extra": {**source_meta.provenance.extra, "source_key": pair.sample_key}}
        )
    else:
        provenance = Provenance(
            dataset="review", image_id=pair.sample_key, extra={"source_key": pair.sample_key}
        )
    if header is None or record.source is None or record.chosen is None or record.rejected is None:
        return Drop(
            key=stable_key(STAGE, record_id, "candidate_missing"),
            reason="candidate_missing",
            detail=f"{record_id} is not in the candidate shards",
            record_id=record_id,
            task=str(Task.PREFERENCE),
            provenance=provenance,
        )
    chosen, rejected = _setting(header, pair.chosen), _setting(header, pair.rejected)
    generator = GeneratorInfo(
        name=GENERATOR,
        backend=pair.chooser,
        model=header.settings[pair.chosen].checkpoint or None,
        settings={"chosen": chosen, "rejected": rejected, "choosers": list(pair.choosers)},
    )
    key = sample_key(Task.PREFERENCE, provenance, generator)
    source = read_member(record.source)
    chosen_png = read_member(record.chosen)
    rejected_png = read_member(record.rejected)
    meta = SampleMeta(
        key=key,
        task=Task.PREFERENCE,
        instruction=header.instruction,
        instruction_source=source_meta.instruction_source if source_meta else "",
        provenance=provenance,
        generator=generator,
        record_id=record_id,
        pretrain_caption=source_meta.pretrain_caption if source_meta else None,
        extra={
            "chosen": pair.chosen,
            "rejected": pair.rejected,
            "chooser": pair.chooser,
            "choosers": list(pair.choosers),
            "votes": pair.votes,
            "against": pair.against,
            "margin": pair.margin,
            "source_task": str(source_meta.task) if source_meta else None,
        },
    )
    source_image, chosen_image = decode_image(source), decode_image(chosen_png)
    mask = difference_mask(Sample(meta=meta, source=source_image, target=chosen_image))
    members = {
        "src.png": source,
        "tgt.png": chosen_png,
        REJECTED_MEMBER: rejected_png,
        "mask.png": encode_image(mask, "png"),
    }
    height, width = chosen_image.shape[:2]
    return EncodedSample(meta=meta, members=members, width=width, height=height, mask_kind="difference")


# ---------------------------------------------------------------------------------------------- the stage


class PreferencesExist(FileExistsError):
    """The output folder holds preferences made from other pairs or settings."""


def pairs_digest(pairs: list[PreferencePair]) -> str:
    return stable_key(
        [
            [p.pair_id, p.chooser, list(p.choosers), p.votes, p.against, p.margin]
            for p in sorted(pairs, key=lambda p: (p.pair_id, p.chooser))
        ]
    )


class PreferencesConfig(BaseModel):
    """How the pairs of an export were chosen (``picks``: the votes they need; ``scores``: the margin),
    which shapes the export as much as the pairs themselves."""

    model_config = ConfigDict(extra="forbid")

    choice: dict[str, Any] = Field(default_factory=dict)


class PreferencesStage(CandidateExportBase):
    """Preference pairs as ``preference`` samples (see the module docstring)."""

    name = STAGE

    def __init__(
        self,
        pairs: list[PreferencePair],
        index: CandidateIndex,
        url: str,
        spec: ShardSpec,
        settings: Mapping | None = None,
    ) -> None:
        super().__init__(index, url, spec)
        self.config = PreferencesConfig(choice=dict(settings or {}))
        self.pairs = pairs

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        upstream = {**self.candidates, "pairs": f"pairs:{pairs_digest(self.pairs)}"}
        return config_fingerprint(STAGE, self.config, env, upstream=upstream, extra={"format": FORMAT})

    def records(self) -> Iterator[PairRecord]:
        index = self.index()
        for pair in self.pairs:
            yield pair_record(pair, index)

    def total(self) -> int:
        return len(self.pairs)

    def run(self, records: list[PairRecord], models: Mapping[str, Any]) -> list[Result]:
        return [preference_sample(r) for r in records]

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        fs.write_bytes_atomic(stage_card(self.url), preference_card(self).encode("utf-8"))
        return {
            "pairs": len(self.pairs),
            "by_chooser": dict(sorted(Counter(p.chooser for p in self.pairs).items())),
            **held(self.url),
        }


def preference_card(stage: PreferencesStage) -> str:
    """The export's data card: its pairs by who chose them (people, a judge, a reward model, a hand
    scorer: each kind apart, each scorer by its full name; reviewers are counted, never named), where the
    candidates came from and how the pairs were chosen."""
    by_kind = Counter(p.chooser for p in stage.pairs)
    by_scorer = Counter(name for p in stage.pairs if p.chooser != "human" for name in p.choosers)
    lines = [
        "# Preference pairs",
        "",
        f"{len(stage.pairs)} pairs of (source, instruction, chosen edit, rejected edit) from the candidates "
        f"in {', '.join(f'`{s}`' for s in stage.sources) or 'memory'}.",
        "",
        "| chooser | pairs |",
        "| --- | ---: |",
        *(f"| {kind} | {count} |" for kind, count in sorted(by_kind.items())),
        "",
    ]
    if by_scorer:
        lines += ["| scorer | pairs |", "| --- | ---: |"]
        lines += [f"| `{name}` | {count} |" for name, count in sorted(by_scorer.items())]
        lines.append("")
    if any(p.chooser == "human" for p in stage.pairs):
        reviewers = {name for p in stage.pairs if p.chooser == "human" for name in p.choosers}
        lines += [f"People's pairs come from {len(reviewers)} reviewer(s) of the review app.", ""]
    lines += [f"How they were chosen: `{json.dumps(stage.config.choice, sort_keys=True)}`.", ""]
    return "\n".join(lines)


def export_preferences(
    pairs: list[PreferencePair],
    index: CandidateIndex,
    out_url: str,
    spec: ShardSpec | None = None,
    overwrite: bool = False,
    settings: Mapping | None = None,
    hf_dir: str | None = None,
    executor: Any = None,
) -> StageSummary:
    """Write ``pairs`` into the stage folder ``out_url`` (and, with ``hf_dir``, the Hugging Face dataset
    of :func:`write_dpo_dataset`, whose figures are the summary's ``extra["hf"]``). ``settings`` (how the
    pairs were chosen) go into the fingerprint. The same pairs exported again change nothing (no batch
    runs; ``extra["held"]`` says what the stage holds); other pairs or settings raise
    :class:`PreferencesExist` unless ``overwrite``, which replaces the previous export."""
    spec = spec or ShardSpec(max_samples=500)
    if len({p.pair_id for p in pairs}) != len(pairs):
        raise ValueError("two pairs prefer the same candidate to the same other one: merge them first")
    stage = PreferencesStage(pairs, index, out_url, spec, settings)
    try:
        with contextlib.ExitStack() as stack:
            if executor is None:
                executor = stack.enter_context(ThreadExecutor(1))
            summary = run_stage(stage, executor, RunOptions(rebuild="changed" if overwrite else "no"))
    except StageChanged as changed:
        lines = "\n".join(f"  {c}" for c in changed.changes)
        raise PreferencesExist(
            f"{out_url} already holds preferences of other pairs or settings:\n{lines}\n"
            "pass overwrite (--overwrite) to replace them, or pick a new folder"
        ) from changed
    summary.extra["hf"] = write_dpo_dataset(out_url, hf_dir) if hf_dir else None
    return summary
