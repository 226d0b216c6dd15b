"""`ieiw candidates | review | review-token | review-status | export-picks`: the human-aligned set.

1. ``ieiw candidates --model CKPT --shards SRC --out CANDS``: N edits per source sample.
2. ``ieiw review-token NAME``: one token per reviewer (printed once; stored hashed).
3. ``ieiw review --candidates CANDS``: import, assign and serve the review app (one command).
4. ``ieiw export-picks --candidates CANDS --out ALIGNED``: the picks as ``aligned`` shards.

The database is ``--db`` or ``$IEIW_REVIEW_DB`` (a SQLAlchemy URL: a SQLite file by default, or
``postgresql+psycopg2://user:password@host/db``); the password never appears in the output.
"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

console = Console()
DB_OPTION = typer.Option(
    "sqlite:///ieiw-review.sqlite",
    "--db",
    envvar="IEIW_REVIEW_DB",
    help="review database URL (SQLAlchemy), or $IEIW_REVIEW_DB",
)


def _floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as bad:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from bad
    if not values:
        raise typer.BadParameter("give at least one value")
    return values


def _bar_progress(bar):
    """A runner's ``progress(done, to do)`` shown on a tqdm bar."""

    def update(done: int, left: int | None) -> None:
        if left is not None and bar.total != left:
            bar.total = left
        bar.update(done - bar.n)

    return update


def _number(value: float | None, why: str = "n/a") -> str:
    return why if value is None else f"{value:.3f}"


def _agreement(agreement) -> Table | str:
    """The agreement between reviewers as a table, or a line saying why there is none yet."""
    if not agreement.samples:
        return (
            "Agreement: no sample has two finished reviews yet (it needs two or more reviewers per "
            "sample: `ieiw review --per-sample 2`)"
        )
    title = f"Agreement over {agreement.samples} samples ({agreement.pairs} pairs of reviews)"
    table = Table("between", "mean Jaccard", "identical picks", "samples", title=title)
    table.add_row(
        "all reviewers",
        _number(agreement.mean_jaccard),
        _number(agreement.exact_match),
        str(agreement.samples),
    )
    for pair, scores in sorted(agreement.by_pair.items()):
        table.add_row(
            pair,
            _number(scores.get("mean_jaccard")),
            _number(scores.get("exact_match")),
            str(scores.get("samples", "")),
        )
    kappa = _number(agreement.fleiss_kappa, "n/a: chance agreement is total (none, or all, were picked)")
    table.caption = f"Fleiss' kappa (picked or not, over all candidates): {kappa}"
    return table


def _progress_table(store) -> Table:
    table = Table("reviewer", "assigned", "done", "skipped", "remaining", "picks")
    for row in store.progress():
        table.add_row(
            row.reviewer,
            str(row.assigned),
            str(row.done),
            str(row.skipped),
            str(row.remaining),
            str(row.picks),
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def candidates(
        model: str = typer.Option(..., help="checkpoint folder (diffusers layout) or hub id"),
        shards: list[str] = typer.Option(..., "--shards", help="source shards or folders (repeatable)"),
        out: str = typer.Option(..., "-o", "--out", help="folder for the candidate shards"),
        n: int = typer.Option(20, "-n", help="candidates per sample"),
        limit: int = typer.Option(1000, help="at most this many source samples"),
        steps: int = typer.Option(20, help="denoising steps"),
        resolution: int = typer.Option(256, help="long side of the working resolution"),
        seed: int = typer.Option(0, help="base seed; each candidate's seed derives from it and the sample"),
        text_guidance: str = typer.Option("5,7.5,10,12.5", help="text guidance scales to cycle"),
        image_guidance: str = typer.Option("1,1.25,1.5,1.75,2", help="image guidance scales to cycle"),
        batch_size: int = typer.Option(8, help="samples per pipeline call"),
        per_shard: int = typer.Option(50, help="samples per candidate shard"),
        device: str = typer.Option("auto", help="auto, cuda or cpu"),
        rebuild: bool = typer.Option(
            False, help="start --out afresh when it holds candidates made with other settings"
        ),
    ) -> None:
        """Generate N candidate edits per source sample (varied seeds and guidance) as candidate shards.

        --out is a stage folder: a rerun with the same settings resumes (or does nothing), one with
        other settings, another checkpoint or other source shards stops and names what changed.
        """
        from ieiw.model.references import pipeline_reference

        model = pipeline_reference(model, "--model")  # one line (exit 2) before heavy libraries load
        from pydantic import ValidationError
        from tqdm.auto import tqdm

        from ieiw.model.candidates import CandidatesConfig, build_candidates
        from ieiw.storage.lease import StageBusy
        from ieiw.storage.stage_folder import StageChanged

        try:
            config = CandidatesConfig(
                model=model,
                shards=shards,
                n=n,
                steps=steps,
                resolution=resolution,
                seed=seed,
                text_guidance=_floats(text_guidance),
                image_guidance=_floats(image_guidance),
                batch_size=batch_size,
                per_shard=per_shard,
                device=device,
                limit=limit,
            )
        except ValidationError as bad:
            raise typer.BadParameter("; ".join(e["msg"] for e in bad.errors())) from bad
        with tqdm(total=limit, desc="candidates", unit="sample") as bar:
            try:
                summary = build_candidates(
                    config, out, rebuild="yes" if rebuild else "no", progress=_bar_progress(bar)
                )
            except StageChanged as changed:
                lines = "\n".join(f"  {c}" for c in changed.changes)
                console.print(
                    f"[red]{out} holds candidates made with other settings:\n{lines}\n"
                    "Nothing ran. Pass --rebuild to replace them, or give --out another folder.[/red]"
                )
                raise typer.Exit(1) from changed
            except StageBusy as busy:
                console.print(f"[red]{busy}[/red]")
                raise typer.Exit(1) from busy
        console.print(
            f"wrote {summary.rows} candidate sets ({summary.batches} shards; "
            f"{summary.records_committed_before} already there) to [bold]{out}[/bold]"
        )

    @app.command("review-token")
    def review_token(
        name: str = typer.Argument(..., help="reviewer name"),
        db: str = DB_OPTION,
    ) -> None:
        """Create a reviewer (or replace their token) and print the token; it is shown only this once."""
        from ieiw.model.review.store import ReviewStore

        store = ReviewStore(db)
        try:
            token = store.add_reviewer(name)
        finally:
            store.close()
        console.print(f"reviewer [bold]{name}[/bold], database {store.display_url}")
        print(token)

    @app.command()
    def review(
        candidates: str = typer.Option(..., help="candidates folder (what `ieiw candidates --out` wrote)"),
        db: str = DB_OPTION,
        per_sample: int = typer.Option(1, help="reviewers per sample (2 or more gives agreement figures)"),
        host: str = typer.Option("127.0.0.1", help="address to listen on"),
        port: int = typer.Option(8765),
        prefect: bool = typer.Option(False, help="run as the `ieiw_review` flow, with progress artifacts"),
        poll_seconds: float = typer.Option(30.0, help="with --prefect: how often to update the artifacts"),
        stop_when_done: bool = typer.Option(True, help="with --prefect: end the flow once all is reviewed"),
        judgements: str = typer.Option(
            None, help="judge's verdicts to show per candidate [<candidates>/quality/judgements if there]"
        ),
        show_judge: bool = typer.Option(
            True, help="show the judge's scores (--no-show-judge: a blind review, to measure the judge)"
        ),
    ) -> None:
        """Import candidates, assign samples to the reviewers and serve the review app."""
        if prefect:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from ieiw.flows.review import review as review_flow
            from ieiw.flows.server import ensure_server, ui_url

            api_url = ensure_server()
            console.print(f"Prefect UI: [bold]{ui_url(api_url)}[/bold]; review app: http://{host}:{port}")
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                summary = review_flow(
                    candidates,
                    db,
                    per_sample=per_sample,
                    host=host,
                    port=port,
                    poll_seconds=poll_seconds,
                    stop_when_done=stop_when_done,
                    judgements=judgements,
                    show_judge=show_judge,
                )
            from ieiw.model.review.agreement import Agreement

            console.print(_agreement(Agreement(**summary["agreement"])))
            return

        from ieiw.model.candidate_shards import CandidateIndex
        from ieiw.model.review.app import create_app
        from ieiw.model.review.judging import candidate_judgements, default_judgements_url
        from ieiw.model.review.serve import serve
        from ieiw.model.review.store import ReviewStore

        store = ReviewStore(db)
        index = CandidateIndex.build(candidates)
        found = judgements or default_judgements_url(candidates)
        verdicts = candidate_judgements(found) if show_judge else {}
        if verdicts:
            console.print(f"showing the judge's verdicts on {len(verdicts)} candidates")
        prepared = store.prepare(index.headers.values(), per_sample)
        if not prepared["reviewers"]:
            console.print("[yellow]no reviewers yet: add them (`ieiw review-token NAME`), restart[/yellow]")
        elif len(prepared["reviewers"]) < per_sample:
            console.print(
                f"[yellow]{len(prepared['reviewers'])} reviewers for --per-sample {per_sample}: "
                "nothing assigned[/yellow]"
            )
        console.print(
            f"{len(index)} samples ({prepared['imported']} new), {prepared['assigned']} new "
            f"assignments, database {store.display_url}"
        )
        console.print(_progress_table(store))
        console.print(f"Review app: [bold]http://{host}:{port}[/bold] (Ctrl-C to stop)")
        try:
            serve(create_app(store, index, judgements=verdicts), host=host, port=port)
        finally:
            store.close()

    @app.command("review-status")
    def review_status(
        db: str = DB_OPTION,
        as_json: bool = typer.Option(
            False, "--json", help="print {progress, agreement} as JSON (for scripts) instead of tables"
        ),
    ) -> None:
        """Reviewed and remaining per reviewer, and the agreement between reviewers."""
        from ieiw.model.review.store import ReviewStore

        store = ReviewStore(db, create=False)
        try:
            if as_json:
                progress = [row.as_dict() for row in store.progress()]
                print(json.dumps({"progress": progress, "agreement": store.agreement().as_dict()}, indent=1))
                return
            console.print(_progress_table(store))
            console.print(_agreement(store.agreement()))
        finally:
            store.close()

    @app.command("export-picks")
    def export_picks(
        candidates: str = typer.Option(..., help="candidates folder (what `ieiw candidates --out` wrote)"),
        out: str = typer.Option(..., "-o", "--out", help="output stage folder (shards/ and manifest/)"),
        db: str = DB_OPTION,
        min_votes: int = typer.Option(1, help="keep candidates picked by at least this many reviewers"),
        overwrite: bool = typer.Option(
            False, help="replace a previous export in --out made from other picks or settings"
        ),
    ) -> None:
        """Write the picks as instruction-tuning shards (task `aligned`) with their provenance."""
        from ieiw.model.candidate_shards import CandidateIndex
        from ieiw.model.review.export import export_picks as run_export
        from ieiw.model.review.store import ReviewStore
        from ieiw.storage.lease import StageBusy

        store = ReviewStore(db, create=False)
        try:
            report = run_export(
                store, CandidateIndex.build(candidates), out, min_votes=min_votes, overwrite=overwrite
            )
        except FileExistsError as exists:
            raise typer.BadParameter(str(exists), param_hint="--out") from exists
        except StageBusy as busy:
            console.print(f"[red]{busy}[/red]")
            raise typer.Exit(1) from busy
        finally:
            store.close()
        if not report.batches and report.records_committed_before:
            held = report.extra["held"]
            console.print(f"{out} already holds this export ({held} picked edits): nothing to do")
            return
        console.print(
            f"exported {report.kept} picked edits to [bold]{out}[/bold] "
            f"({report.shards} shards); dropped {dict(report.dropped) or 'none'}"
        )
