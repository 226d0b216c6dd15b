"""`ieiw export-preferences`: preference pairs (source, instruction, chosen edit, rejected edit) for
preference training, from the review app's picks, the judge's verdicts (`ieiw judge-candidates`) and scored
candidates (a judge's or a reward model's JSON lines)."""

from __future__ import annotations

import typer
from rich.console import Console

from ieiw.flows.commands.review import DB_OPTION

console = Console()


def register(app: typer.Typer) -> None:
    @app.command("export-preferences")
    def export_preferences(
        candidates: str = typer.Option(..., help="candidates folder (what `ieiw candidates --out` wrote)"),
        out: str = typer.Option(..., "-o", "--out", help="output stage folder (shards/ and manifest/)"),
        db: str = DB_OPTION,
        hf: str = typer.Option(
            None, help="also write a Hugging Face dataset here, in diffusers' Diffusion-DPO column layout"
        ),
        picks: bool = typer.Option(True, help="pairs from the review app's picks"),
        min_net_votes: int = typer.Option(1, help="picks: reviewers for a pair minus those against it"),
        max_pairs_per_sample: int = typer.Option(0, help="at most this many pairs per candidate set; 0: all"),
        scores: str = typer.Option(
            None,
            help='JSON lines {"key", "scores": {"<position>": score}, "scorer"}: pairs from scored '
            "candidates (a judge's or a reward model's); each pair's chooser is the scorer's kind, its name "
            "up to the first ':' (judge:<model>#<rubric> -> judge, reward-model:<name> -> reward-model, "
            'hand -> hand), or the line\'s own "chooser"',
        ),
        judgements: str = typer.Option(
            None,
            help="pairs from the judge's verdicts: the judgements stage `ieiw judge-candidates` wrote "
            "(<candidates>/quality/judgements by default; 'default' names it)",
        ),
        judge_score: str = typer.Option(
            "overall", help="judgements: the judge's score that ranks candidates"
        ),
        margin: float = typer.Option(
            1.0, help="scores, judgements: the least score difference that makes a pair"
        ),
        overwrite: bool = typer.Option(False, help="replace a previous export in --out of other pairs"),
    ) -> None:
        """Write preference pairs with who or what chose them, as shards (task `preference`) and optionally
        as a Hugging Face dataset that diffusers' train_diffusion_dpo.py reads."""
        from ieiw.model.candidate_shards import CandidateIndex
        from ieiw.model.preferences import export_preferences as run_export
        from ieiw.model.preferences import human_pairs, read_scored, scored_pairs
        from ieiw.model.review.store import ReviewStore
        from ieiw.storage.lease import StageBusy

        cap = max_pairs_per_sample or None
        pairs, settings = [], {}
        if picks:
            store = ReviewStore(db, create=False)
            try:
                pairs += human_pairs(*store.votes(), min_net_votes=min_net_votes, max_pairs_per_sample=cap)
            finally:
                store.close()
            settings["picks"] = {"min_net_votes": min_net_votes, "max_pairs_per_sample": cap}
        if scores:
            try:
                pairs += scored_pairs(read_scored(scores), margin=margin, max_pairs_per_sample=cap)
            except (OSError, ValueError) as bad:
                raise typer.BadParameter(str(bad), param_hint="--scores") from bad
            settings["scores"] = {"margin": margin, "max_pairs_per_sample": cap}
        if judgements:
            from ieiw.model.preferences import judged_candidates
            from ieiw.model.review.judging import default_judgements_url
            from ieiw.storage import manifest

            url = default_judgements_url(candidates) if judgements == "default" else judgements
            if not manifest.is_stage_folder(url):
                raise typer.BadParameter(
                    f"no judgements at {url}: run `ieiw judge-candidates {candidates}` first",
                    param_hint="--judgements",
                )
            try:
                judged = judged_candidates(url, judge_score)
            except ValueError as bad:
                raise typer.BadParameter(str(bad), param_hint="--judge-score") from bad
            pairs += scored_pairs(judged, margin=margin, max_pairs_per_sample=cap)
            settings["judgements"] = {"score": judge_score, "margin": margin, "max_pairs_per_sample": cap}
        if not pairs:
            nothing = "no finished review with picks, no judgements, no scores"
            console.print(f"[yellow]no preference pairs: {nothing}[/yellow]")
            raise typer.Exit(1)
        try:
            index = CandidateIndex.build(candidates)
            result = run_export(pairs, index, out, overwrite=overwrite, settings=settings, hf_dir=hf)
        except FileExistsError as exists:
            raise typer.BadParameter(str(exists), param_hint="--out") from exists
        except ValueError as bad:
            console.print(f"[red]{bad}[/red]")
            raise typer.Exit(1) from bad
        except StageBusy as busy:
            console.print(f"[red]{busy}[/red]")
            raise typer.Exit(1) from busy
        extra = result.extra
        if not result.batches and result.records_committed_before:
            state, kept, dropped = "already held", extra["held"], extra["held_dropped"]
        else:
            state, kept, dropped = "exported", result.kept, result.dropped
        console.print(
            f"{state} {kept} preference pairs in [bold]{out}[/bold] (by {extra['by_chooser']}; "
            f"dropped {dict(dropped) or 'none'})"
        )
        if extra["hf"]:
            console.print(f"Hugging Face dataset: {extra['hf']['rows']} rows in [bold]{hf}[/bold]")
            console.print(extra["hf"]["train_command"])
