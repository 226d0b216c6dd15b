"""The quality judge on review candidates: its scores and reasons next to each candidate edit in the
review app, and how well they agree with what people picked (``ieiw judge-agreement``).

:class:`JudgementsStage` (``ieiw judge-candidates``, :func:`judge_candidates`) is a ``rows`` stage run by
the one runner: its records are the candidate sets of a candidates stage in input order (the sample key
is the record id), and a batch's manifest part holds the judgements of its sets' candidates (source,
candidate, the instruction, the source sample's task and so its rubric). It lives in a stage folder of
its own (default ``<candidates>/quality/judgements``); its fingerprint holds the judge's config as its
fields declare (the model by identity, decoding settings, rubric versions) and the candidates' identity.
The judge is the stage's model, loaded once per worker, and answers through its content-addressed cache,
which lives beside the candidates in their build's layout (``caches/judge``), never inside a stage
folder, so a rerun, or a rebuild of either stage, asks only what was never answered.

:func:`candidate_judgements` reads them back by ``(sample key, position)`` for the review app;
:func:`agreement_rows` joins them with the finished reviews of a review database for
:func:`ieiw.quality.agreement.judge_agreement`.
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd
import pyarrow as pa

from ieiw.model.candidate_shards import CandidateIndex, MemberLocation, candidate_member, read_member
from ieiw.model.inputs import input_identities
from ieiw.model.review.reports import ReviewReports
from ieiw.quality.agreement import ScoreAgreement, judge_agreement
from ieiw.quality.judge import (
    JUDGE_COLUMNS,
    JUDGE_SCORES,
    JUDGE_UNREADABLE,
    Judge,
    JudgeConfig,
    JudgeRequest,
)
from ieiw.storage import fs, manifest
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.layout import BuildLayout
from ieiw.storage.runner import RunOptions, StageSummary, ThreadExecutor, run_stage
from ieiw.storage.stage import HOST, ModelSpec, Rows, Stage, model_key
from ieiw.storage.stage_folder import Rebuild

STAGE = "candidate_judgements"
JUDGEMENTS_DIR = "quality/judgements"
JUDGEMENTS_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # the source sample's key (a candidate set's)
        ("record_id", pa.string()),  # <key>:<position>
        ("position", pa.int32()),
        ("task", pa.string()),
        ("shard", pa.string()),
        *[(name, pa.float32()) for name in JUDGE_SCORES],
        *[(name, pa.string()) for name in JUDGE_COLUMNS],
        ("fingerprint", pa.string()),
    ]
)


def default_judgements_url(candidates_url: str) -> str:
    return fs.join(candidates_url, JUDGEMENTS_DIR)


def judge_answers_url(candidates_url: str, config: JudgeConfig) -> str:
    """Where the judge's answers are cached: the config's ``cache_url``, else the ``caches/judge`` of
    the build the candidates belong to (outside every stage folder, so no rebuild wipes it)."""
    return config.cache_url or BuildLayout.of_stage(candidates_url).judge_answers


@dataclass(frozen=True)
class CandidateSetRecord:
    """One candidate set to judge: where its source and candidates lie, and what the judge is told."""

    record_id: str  # the sample key
    shard: str
    task: str
    instruction: str
    source: MemberLocation | None
    candidates: tuple[MemberLocation | None, ...]


def candidate_records(candidates_url: str) -> Iterator[CandidateSetRecord]:
    """The candidate sets of ``candidates_url`` in input order, with where each member lies."""
    index = CandidateIndex.build(candidates_url)
    for key, header in index.headers.items():
        task = str(header.source_meta.task) if header.source_meta is not None else "aligned"
        members = [index.find(key, "src.png")]
        members += [index.find(key, candidate_member(p)) for p in range(len(header.settings))]
        shard = posixpath.basename(members[0].url) if members[0] else ""
        yield CandidateSetRecord(key, shard, task, header.instruction, members[0], tuple(members[1:]))


def _bytes(location: MemberLocation | None) -> bytes:
    return read_member(location) if location is not None else b""  # nothing: the judge says unreadable


def load_judge(config: JudgeConfig, cache_url: str) -> Judge:
    return Judge.from_config(config, cache_url)


class JudgementsStage(Stage):
    """The judge's verdict on every candidate of a candidates stage, a few candidate sets a batch."""

    name = STAGE
    writes = "rows"
    schema = JUDGEMENTS_SCHEMA

    def __init__(self, config: JudgeConfig, candidates_url: str, url: str, batch_size: int = 8) -> None:
        super().__init__(url, batch_size)
        self.config = config
        self.candidates_url = candidates_url
        self.cache_url = judge_answers_url(candidates_url, config)

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        # a served judge computes in whatever its server does: the workers' precision is not its
        exclude = ("dtype",) if self.config.backend == "openai" else ()
        upstream = input_identities([self.candidates_url])
        return config_fingerprint(STAGE, self.config, env, upstream=upstream, exclude=exclude)

    def records(self) -> Iterator[CandidateSetRecord]:
        return candidate_records(self.candidates_url)

    def models(self) -> Mapping[str, ModelSpec]:
        config = self.config
        device = HOST if config.backend == "openai" else config.device
        return {
            "judge": ModelSpec(
                model_key("judge", config, self.cache_url),
                partial(load_judge, config, self.cache_url),
                device,
            )
        }

    def run(self, records: list[CandidateSetRecord], models: Mapping[str, Any]) -> Rows:
        judge: Judge = models["judge"]
        requests, rows = [], []
        for record in records:
            source = _bytes(record.source)
            for position, location in enumerate(record.candidates):
                record_id = f"{record.record_id}:{position}"
                requests.append(
                    JudgeRequest(record_id, record.task, record.instruction, source, _bytes(location))
                )
                rows.append(
                    {
                        "key": record.record_id,
                        "record_id": record_id,
                        "position": position,
                        "task": record.task,
                        "shard": record.shard,
                        "fingerprint": "",  # the commit writes the stage's
                    }
                )
        counts: Counter = Counter()
        for row, judgement in zip(rows, judge.judge(requests), strict=True):
            row.update(judgement.columns())
            counts["judged"] += 1
            counts["failed"] += judgement.error is not None
            counts["cache_hits"] += judgement.cached
            counts["requests"] += not judgement.cached and judgement.error != JUDGE_UNREADABLE
        return Rows(pa.Table.from_pylist(rows, schema=JUDGEMENTS_SCHEMA), counts=counts)

    def info(self) -> dict[str, Any]:
        return {"candidates_url": self.candidates_url, "judge_answers": self.cache_url}


def judge_candidates(
    judge: JudgeConfig | Judge,
    candidates_url: str,
    out_url: str | None = None,
    rebuild: Rebuild = "no",
    progress: Callable[[int], None] | None = None,
    batch_size: int = 8,
    executor: Any = None,
) -> StageSummary:
    """Judge every candidate of ``candidates_url`` not judged yet into the stage ``out_url`` (default
    :func:`default_judgements_url`), on ``executor`` (by default one thread of this process; each batch
    sends up to the judge's ``max_in_flight`` requests at once). ``progress(n)`` is called with the
    candidate sets judged, batch by batch. The summary's ``counts`` say how many candidates were judged,
    failed, answered from the cache and sent to the judge now."""
    config = judge.config if isinstance(judge, Judge) else judge
    stage = JudgementsStage(
        config, candidates_url, out_url or default_judgements_url(candidates_url), batch_size
    )
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(ThreadExecutor(1))
        return run_stage(stage, executor, RunOptions(rebuild=rebuild), _increments(progress))


def _increments(progress: Callable[[int], None] | None) -> Callable[[int, int | None], None] | None:
    """A runner's ``progress(done, to do)`` as increments."""
    if progress is None:
        return None
    seen = 0

    def update(done: int, left: int | None) -> None:
        nonlocal seen
        progress(done - seen)
        seen = done

    return update


def read_judgements(url: str) -> pd.DataFrame:
    """The committed judgements (one row per candidate)."""
    return manifest.read_table(url, None, schema=JUDGEMENTS_SCHEMA).to_pandas()


def candidate_judgements(url: str | None) -> dict[tuple[str, int], dict]:
    """``{(sample key, position): verdict}`` for the review app: ``scores`` and ``reasons`` by
    criterion, the judge model and rubric, or ``error``. Empty when there are none at ``url``."""
    if not url or not manifest.is_stage_folder(url):
        return {}
    out: dict[tuple[str, int], dict] = {}
    for row in read_judgements(url).to_dict(orient="records"):
        verdict: dict = {"model": row["judge_model"], "rubric": row["judge_rubric"]}
        if isinstance(row["judge_error"], str):
            verdict["error"] = row["judge_error"]
        else:
            verdict["scores"] = {
                name.removeprefix("judge_"): float(row[name])
                for name in JUDGE_SCORES
                if row[name] is not None and not math.isnan(row[name])
            }
            verdict["reasons"] = json.loads(row["judge_reasons"] or "{}")
        out[(row["key"], int(row["position"]))] = verdict
    return out


def agreement_rows(store: ReviewReports, judgements: pd.DataFrame) -> pd.DataFrame:
    """Every candidate of a sample at least one reviewer finished, with its votes, its number of
    finished reviewers and the judge's scores."""
    votes, _ = store.votes()
    rows = []
    for key, group in judgements.groupby("key"):
        by_reviewer = votes.get(key)
        if not by_reviewer:
            continue
        for row in group.to_dict(orient="records"):
            picks = sum(row["position"] in picked for picked in by_reviewer.values())
            rows.append({**row, "votes": picks, "reviewers": len(by_reviewer)})
    return pd.DataFrame(rows, columns=[*judgements.columns, "votes", "reviewers"])


def judge_agreement_report(store: ReviewReports, judgements_url: str) -> list[ScoreAgreement]:
    """How each judge score ranks the picked candidates against the rejected ones."""
    return judge_agreement(agreement_rows(store, read_judgements(judgements_url)), JUDGE_SCORES)
