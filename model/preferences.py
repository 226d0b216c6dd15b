"""Preference pairs for preference training: (source, instruction, chosen edit, rejected edit), and who chose.

Where the pairs come from (each a :class:`PreferencePair` naming two candidates of one candidate set):

- the review app's picks (:func:`human_pairs`): a reviewer who finished a sample with picks prefers each
  candidate they picked to each they did not. Over reviewers a pair counts the votes for it and against it
  (another reviewer picked the other one); it is kept when the net votes reach ``min_net_votes``. A sample
  finished with no pick, or skipped, says nothing;
- scores of the candidates (:func:`scored_pairs`), the hook for a judge or a reward model: anything that
  gives a candidate set's candidates a score (:class:`ScoredCandidates`, or the JSON lines
  :func:`read_scored` reads) gives pairs whose scores differ by at least ``margin``, largest first.

:func:`export_preferences` writes them through :class:`PreferencesStage`, a ``samples`` stage run by the one
runner (its records are the pairs in order, ``<key>:<chosen>><rejected>`` the record id; its fingerprint
holds the candidates' identity, the pairs and how they were chosen; the same pairs exported again do
nothing).
Every pair is one WebDataset sample of task ``preference``: ``src.png`` (the source), ``tgt.png`` (the
chosen edit, so any reader of ours trains on it as an edit), ``rejected.png``, ``mask.png`` (where the
chosen edit differs from the source) and the flat ``json`` (instruction, provenance of the source sample,
both candidates' settings, and in ``extra`` who or what chose: ``chooser``, ``choosers``, votes, margin).
:func:`write_dpo_dataset` turns the committed shards into a Hugging Face dataset in the column layout of
diffusers' Diffusion-DPO example (:data:`DPO_COLUMNS`), plus the source image.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from ieiw.model.candidate_shards import (
    CandidateHeader,
    CandidateIndex,
    MemberLocation,
    candidate_member,
    read_member,
)
from ieiw.model.reports import write_json
from ieiw.model.review.export import held
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.images import decode_image, encode_image
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
from ieiw.storage.shards import ShardSpec, difference_mask, expand_shard_urls, iter_tar_groups
from ieiw.storage.stage import Stage
from ieiw.storage.stage_folder import StageChanged

FORMAT = "ieiw-preferences/1"
STAGE = "preferences"
GENERATOR = "preference"
REJECTED_MEMBER = "rejected.png"
HUMAN = "human"

# The columns diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo.py (and its SDXL
# twin) read: examples["caption"] (the text), the encoded bytes of examples["jpg_0"] and examples["jpg_1"]
# (opened with PIL from BytesIO), and examples["label_0"] (1: jpg_0 is preferred; 0: jpg_1 is, the script
# swaps the two), from the split named by --dataset_split_name (its default is "validation").
DPO_COLUMNS = {"caption": "caption", "image_0": "jpg_0", "image_1": "jpg_1", "label_0": "label_0"}
SOURCE_COLUMN = "input_image"  # ours: the source an edit preference needs (diffusers' InstructPix2Pix name)
DPO_SCHEMA = pa.schema(
    [
        (DPO_COLUMNS["caption"], pa.string()),
        (DPO_COLUMNS["image_0"], pa.binary()),
        (DPO_COLUMNS["image_1"], pa.binary()),
        (DPO_COLUMNS["label_0"], pa.float64()),
        (SOURCE_COLUMN, pa.binary()),
        ("key", pa.string()),
        ("source_key", pa.string()),
        ("chooser", pa.string()),
        ("choosers", pa.list_(pa.string())),
        ("margin", pa.float64()),
    ]
)


@dataclass(frozen=True)
class PreferencePair:
    """Candidate ``chosen`` of candidate set ``sample_key`` preferred to candidate ``rejected``."""

    sample_key: str
    chosen: int
    rejected: int
    chooser: str  # "human", or what scored (e.g. "judge")
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
    :func:`scored_pairs`, for a judge or a reward model."""

    sample_key: str
    scores: Mapping[int, float]  # candidate position -> score
    scorer: str  # what scored, by identity (a model and its rubric version, say)
    chooser: str = "judge"


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


def read_scored(path: str, chooser: str = "judge") -> list[ScoredCandidates]:
    """Scored candidates from JSON lines ``{"key": ..., "scores": {"<position>": score}, "scorer": ...}``:
    the file a judge or reward model writes for :func:`scored_pairs`."""
    found = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                scores = {int(k): float(v) for k, v in row["scores"].items()}
                found.append(ScoredCandidates(str(row["key"]), scores, str(row["scorer"]), chooser))
            except (ValueError, KeyError, TypeError, AttributeError) as bad:
                raise ValueError(f"{path}:{number}: not a scored candidate set ({bad})") from bad
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


class PreferencesStage(Stage):
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
        super().__init__(url, spec.max_samples, spec)
        self.config = PreferencesConfig(choice=dict(settings or {}))
        self.pairs = pairs
        self.candidates = index.identity()
        self.sources = list(index.sources)
        self._index: CandidateIndex | None = index  # read where the stage is planned; never sent along

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None}

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        upstream = {**self.candidates, "pairs": f"pairs:{pairs_digest(self.pairs)}"}
        return config_fingerprint(STAGE, self.config, env, upstream=upstream, extra={"format": FORMAT})

    def records(self) -> Iterator[PairRecord]:
        index = self._index if self._index is not None else CandidateIndex.build(self.sources)
        for pair in self.pairs:
            yield pair_record(pair, index)

    def total(self) -> int:
        return len(self.pairs)

    def run(self, records: list[PairRecord], models: Mapping[str, Any]) -> list[Result]:
        return [preference_sample(r) for r in records]

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "pairs": len(self.pairs),
            "by_chooser": dict(sorted(Counter(p.chooser for p in self.pairs).items())),
            **held(self.url),
        }


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


# ---------------------------------------------------------------------------------------------- Hugging Face


def iter_preference_rows(shard_urls: Iterable[str] | str) -> Iterator[dict]:
    """The rows of the Diffusion-DPO layout, one per committed preference sample. Which of the two images is
    ``jpg_0`` is a stable coin flip per pair (as in Pick-a-Pic, the label says which is preferred)."""
    for url in expand_shard_urls(shard_urls):
        for _, members in iter_tar_groups(url):
            meta = SampleMeta.model_validate_json(members["json"])
            if meta.task != Task.PREFERENCE:
                continue
            chosen, rejected = members["tgt.png"], members[REJECTED_MEMBER]
            first_is_chosen = hashlib.sha256(meta.key.encode()).digest()[0] % 2 == 0
            extra = meta.extra
            yield {
                DPO_COLUMNS["caption"]: meta.instruction,
                DPO_COLUMNS["image_0"]: chosen if first_is_chosen else rejected,
                DPO_COLUMNS["image_1"]: rejected if first_is_chosen else chosen,
                DPO_COLUMNS["label_0"]: 1.0 if first_is_chosen else 0.0,
                SOURCE_COLUMN: members["src.png"],
                "key": meta.key,
                "source_key": str(meta.provenance.extra.get("source_key", "")),
                "chooser": str(extra.get("chooser", "")),
                "choosers": [str(c) for c in extra.get("choosers", [])],
                "margin": extra.get("margin"),
            }


def write_dpo_dataset(stage_url: str, out_dir: str, split: str = "train", rows_per_file: int = 1000) -> dict:
    """The committed preferences of ``stage_url`` as Parquet parts in the hub layout
    (``<out>/data/<split>-00000-of-0000N.parquet``, which ``datasets.load_dataset(out)`` opens); returns
    ``{"rows", "files", "train_command"}``."""
    data = Path(out_dir) / "data"
    data.mkdir(parents=True, exist_ok=True)
    for stale in data.glob(f"{split}-*-of-*.parquet"):
        stale.unlink()
    parts: list[Path] = []
    buffer: list[dict] = []
    rows = 0

    def flush() -> None:
        path = data / f".part-{len(parts):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(buffer, schema=DPO_SCHEMA), path)
        parts.append(path)

    for row in iter_preference_rows(stage_url):
        buffer.append(row)
        if len(buffer) == rows_per_file:
            flush()
            rows, buffer = rows + len(buffer), []
    if buffer or not parts:
        flush()
        rows += len(buffer)
    files = []
    for i, part in enumerate(parts):
        final = data / f"{split}-{i:05d}-of-{len(parts):05d}.parquet"
        part.rename(final)
        files.append(str(final))
    command = (
        f"accelerate launch train_diffusion_dpo.py --dataset_name {out_dir} --dataset_split_name {split}"
    )
    result = {"rows": rows, "files": files, "train_command": command}
    write_json(Path(out_dir) / "export_info.json", result)
    return result
