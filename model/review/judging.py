"""The quality judge on review candidates: its scores and reasons next to each candidate edit in the
review app, and how well they agree with what people picked (``ieiw judge-agreement``).

:func:`judge_candidates` (``ieiw judge-candidates``) judges every candidate edit of a candidate stage
(source, candidate, the instruction, the source sample's task and so its rubric) into a stage folder
of its own (default ``<candidates>/quality/judgements``): one batch per candidate shard, named
``judge-<shard>``, whose manifest part is that shard's judgements. Its fingerprint holds the judge
model's identity, its settings and rubric versions, and the candidates' identity; answers go
through the judge's cache (default ``<candidates>/quality/judge-cache``), so a rerun, or a rebuild
after a change elsewhere, asks only what was never answered.

:func:`candidate_judgements` reads them back by ``(sample key, position)`` for the review app;
:func:`agreement_rows` joins them with the finished reviews of a review database for
:func:`ieiw.quality.agreement.judge_agreement`.
"""

from __future__ import annotations

import json
import math
import posixpath
import time
from collections.abc import Callable

import pandas as pd
import pyarrow as pa

from ieiw.model.candidate_shards import FORMAT, CandidateHeader, candidate_member
from ieiw.model.inputs import input_identities
from ieiw.model.review.reports import ReviewReports
from ieiw.quality.agreement import ScoreAgreement, judge_agreement
from ieiw.quality.judge import JUDGE_COLUMNS, JUDGE_SCORES, Judge, JudgeRequest, default_cache_url
from ieiw.storage import fs, manifest
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.shards import expand_shard_urls, iter_tar_groups
from ieiw.storage.stage_folder import Rebuild, open_stage

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


def judgements_fingerprint(judge: Judge, candidates_url: str) -> Fingerprint:
    """What determines the judgements: the judge (model by identity, settings, rubric versions) and
    the candidates by identity."""
    return Fingerprint(
        stage=STAGE,
        settings={"judge": judge.config.fingerprint_settings()},
        models={"judge.model": judge.model},
        upstream=input_identities([candidates_url]),
    )


def _shard_requests(shard_url: str) -> tuple[list[JudgeRequest], list[dict]]:
    requests, rows = [], []
    shard = posixpath.basename(shard_url)
    for _, members in iter_tar_groups(shard_url):
        header = CandidateHeader.model_validate_json(members["json"])
        if header.format != FORMAT:
            raise ValueError(f"{shard_url}: {header.key}: unknown candidate format {header.format!r}")
        task = str(header.source_meta.task) if header.source_meta is not None else "aligned"
        for position in range(len(header.settings)):
            requests.append(
                JudgeRequest(
                    f"{header.key}:{position}",
                    task,
                    header.instruction,
                    members["src.png"],
                    members[candidate_member(position)],
                )
            )
            rows.append(
                {
                    "key": header.key,
                    "record_id": f"{header.key}:{position}",
                    "position": position,
                    "task": task,
                    "shard": shard,
                }
            )
    return requests, rows


def judge_candidates(
    judge: Judge,
    candidates_url: str,
    out_url: str | None = None,
    rebuild: Rebuild = "no",
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Judge every candidate of ``candidates_url`` not judged yet into the stage ``out_url``."""
    out_url = out_url or default_judgements_url(candidates_url)
    judge = judge.with_cache(default_cache_url(out_url))
    started = time.perf_counter()
    judged = failed = 0
    shards = expand_shard_urls([candidates_url])
    with open_stage(
        out_url,
        judgements_fingerprint(judge, candidates_url),
        rebuild=rebuild,
        info={"candidates_url": candidates_url},
    ) as writer:
        done = writer.committed_batches()
        for shard_url in shards:
            batch = f"judge-{posixpath.basename(shard_url).removesuffix('.tar')}"
            if batch in done:
                continue
            requests, rows = _shard_requests(shard_url)
            for row, judgement in zip(rows, judge.judge(requests, progress), strict=True):
                row.update(judgement.columns())
                judged += 1
                failed += judgement.error is not None
            writer.commit_files(batch, pa.Table.from_pylist(rows, schema=JUDGEMENTS_SCHEMA))
        seconds = round(time.perf_counter() - started, 3)
        writer.finish(
            {"judged": judged, "failed": failed, "compute_seconds": seconds}, schema=JUDGEMENTS_SCHEMA
        )
    return {
        "out_url": out_url,
        "shards": len(shards),
        "judged": judged,
        "failed": failed,
        "requests": judge.requests_sent,
        "cache_hits": judge.cache_hits,
        "fingerprint": writer.digest,
        "rebuilt": writer.rebuilt,
    }


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
