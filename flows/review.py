"""`ieiw_review`: run a human review from a flow and publish its progress as Prefect artifacts.

The flow imports the candidate shards into the review database, gives every sample to
``per_sample`` reviewers, serves the review app in a background thread (or only watches a
database that an app elsewhere writes to, ``serve=False``) and, every ``poll_seconds``, updates:

- ``review-progress``: a progress artifact, the share of assigned samples reviewed;
- ``review-reviewers``: a table artifact, reviewed and remaining per reviewer (on every change);
- ``review-agreement``: a markdown artifact with the agreement between reviewers (at the end).

It returns when every assigned sample is reviewed (``stop_when_done``) or after ``max_minutes``.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ieiw.model.candidate_shards import CandidateIndex
from ieiw.model.review.agreement import Agreement
from ieiw.model.review.app import create_app
from ieiw.model.review.judging import candidate_judgements, default_judgements_url
from ieiw.model.review.reports import Progress
from ieiw.model.review.serve import serving
from ieiw.model.review.store import ReviewStore


def reviewed_share(rows: list[Progress]) -> float:
    assigned = sum(r.assigned for r in rows)
    return 100.0 * sum(r.reviewed for r in rows) / assigned if assigned else 0.0


def agreement_markdown(report: Agreement) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    lines = [
        "# Review agreement",
        "",
        f"Samples finished by two or more reviewers: **{report.samples}** ({report.pairs} pairs).",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| mean Jaccard of pick sets | {fmt(report.mean_jaccard)} |",
        f"| identical pick sets | {fmt(report.exact_match)} |",
        f"| Fleiss' kappa (per candidate) | {fmt(report.fleiss_kappa)} |",
    ]
    if report.by_pair:
        lines += ["", "| reviewers | samples | mean Jaccard | identical |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {pair} | {s['samples']} | {s['mean_jaccard']:.3f} | {s['exact_match']:.3f} |"
            for pair, s in report.by_pair.items()
        ]
    return "\n".join(lines)


@flow(name="ieiw_review", log_prints=True)
def review(
    candidates: str,
    db_url: str,
    per_sample: int = 1,
    serve: bool = True,
    host: str = "127.0.0.1",
    port: int = 8765,
    poll_seconds: float = 30.0,
    max_minutes: float | None = None,
    stop_when_done: bool = True,
    judgements: str | None = None,
    show_judge: bool = True,
) -> dict:
    """Serve (or watch) a review until it is finished; returns progress and agreement.

    The app shows the judge's verdicts on each candidate (``judgements``, default
    ``<candidates>/quality/judgements`` when it is there) unless ``show_judge`` is off (a blind review,
    to measure the judge against the picks)."""
    logger = get_run_logger()
    store = ReviewStore(db_url)
    try:
        index = CandidateIndex.build(candidates)
        prepared = store.prepare(index.headers.values(), per_sample)
        logger.info(
            "review database %s: %d samples imported, %d assignments added, reviewers %s",
            store.display_url,
            prepared["imported"],
            prepared["assigned"],
            prepared["reviewers"],
        )
        progress_id = create_progress_artifact(
            0.0, key="review-progress", description="share of assigned samples reviewed"
        )
        found = judgements or default_judgements_url(candidates)
        verdicts = candidate_judgements(found) if show_judge else {}
        if verdicts:
            logger.info("showing the judge's verdicts on %d candidates", len(verdicts))
        app = create_app(store, index, judgements=verdicts)
        server = serving(app, host=host, port=port) if serve else nullcontext(None)
        deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
        last: list[dict] | None = None
        with server as url:
            if url:
                logger.info("review app at %s", url)
            while True:
                rows = store.progress()
                table = [r.as_dict() for r in rows]
                if table != last:
                    update_progress_artifact(progress_id, reviewed_share(rows))
                    create_table_artifact(
                        table or [{"reviewer": "none"}],
                        key="review-reviewers",
                        description="reviewed and remaining per reviewer",
                    )
                    last = table
                finished = sum(r.assigned for r in rows) > 0 and all(r.remaining == 0 for r in rows)
                if (stop_when_done and finished) or (deadline is not None and time.monotonic() >= deadline):
                    break
                time.sleep(poll_seconds)
        report = store.agreement()
        create_markdown_artifact(
            agreement_markdown(report), key="review-agreement", description="agreement between reviewers"
        )
        return {
            "progress": last or [],
            "agreement": report.as_dict(),
            "counts": store.counts(),
            "finished": finished,
            **prepared,
        }
    finally:
        store.close()
