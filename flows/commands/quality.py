"""``ieiw`` quality commands: score, filter, build-giqa-index, quality-report, judge-candidates,
judge-agreement.

Registered by ``flows/cli.py`` with ``register(app)``. ``--config`` is a YAML build config whose
``quality:`` section is a :class:`ieiw.quality.config.QualityConfig` (or a file that is only that section).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML build config (quality section)")
]


def _config(path: Path | None):
    from ieiw.quality.config import QualityConfig

    return QualityConfig.from_yaml(path) if path else QualityConfig()


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score_command(
        candidates: Annotated[str, typer.Argument(help="candidate stage URL (holds shards/ and manifest/)")],
        config: ConfigOption = None,
        scores: Annotated[
            str | None, typer.Option(help="scores table URL [<candidates>/quality/scores]")
        ] = None,
    ) -> None:
        """Embed and score candidate shards (resumable: scored shards are skipped)."""
        from ieiw.flows.score import score_flow

        result = score_flow(candidates, scores, _config(config).model_dump(mode="json"))
        typer.echo(json.dumps(result, indent=2, default=str))

    @app.command("filter")
    def filter_command(
        candidates: Annotated[str, typer.Argument(help="candidate stage URL")],
        out: Annotated[str, typer.Argument(help="final stage URL (shards, manifest, report)")],
        config: ConfigOption = None,
        scores: Annotated[
            str | None, typer.Option(help="scores table URL [<candidates>/quality/scores]")
        ] = None,
        report: Annotated[str | None, typer.Option(help="report URL [<out>/report]")] = None,
    ) -> None:
        """Apply the filter policy and write the final shards, manifest and report."""
        from ieiw.flows.filter import filter_flow

        result = filter_flow(candidates, out, scores, _config(config).model_dump(mode="json"), report)
        typer.echo(json.dumps(result, indent=2, default=str))

    @app.command("build-giqa-index")
    def build_giqa_index_command(
        inputs: Annotated[
            list[str], typer.Argument(help=".npy embedding shards/dirs, or image dirs with --images")
        ],
        out: Annotated[Path, typer.Option("--out", "-o", help="local index directory")],
        images: Annotated[bool, typer.Option(help="inputs are reference images: embed them first")] = False,
        features: Annotated[str, typer.Option(help="clip or inception (with --images)")] = "clip",
        inception_checkpoint: Annotated[Path | None, typer.Option(help="InceptionV3 state dict")] = None,
        kind: Annotated[str, typer.Option(help="auto, flat (exact) or ivfpq (compressed)")] = "auto",
        metric: Annotated[str, typer.Option(help="l2 or l1 (l1: exact index only)")] = "l2",
        pq_m: Annotated[int, typer.Option(help="PQ bytes per vector")] = 64,
        nlist: Annotated[int | None, typer.Option(help="IVF lists [4*sqrt(N)]")] = None,
        train_size: Annotated[int, typer.Option(help="vectors sampled to train IVF-PQ")] = 200_000,
        config: ConfigOption = None,
    ) -> None:
        """Build the KNN-GIQA reference index (exact for small sets, IVF-PQ on disk at LAION scale)."""
        from ieiw.quality.giqa_index import ReferenceIndexSettings, build_reference_index

        npy_inputs = list(inputs)
        if images:
            npy_inputs = [
                _embed_reference_images(
                    inputs, out / "embeddings", features, inception_checkpoint, _config(config)
                )
            ]
        settings = ReferenceIndexSettings(
            kind=kind, metric=metric, pq_m=pq_m, nlist=nlist, train_size=train_size, features=features
        )
        meta = build_reference_index(npy_inputs, str(out), settings)
        typer.echo(meta.model_dump_json(indent=2))

    @app.command("quality-report")
    def quality_report_command(
        candidates: Annotated[str, typer.Argument(help="candidate stage URL")],
        final: Annotated[str, typer.Argument(help="final stage URL written by `ieiw filter`")],
        config: ConfigOption = None,
        scores: Annotated[str | None, typer.Option(help="scores table URL")] = None,
        out: Annotated[str | None, typer.Option(help="report URL [<final>/report]")] = None,
    ) -> None:
        """(Re)write the quality report: histograms, drop counts, dropped samples, gallery."""
        from ieiw.quality.config import default_scores_url
        from ieiw.quality.report import write_report
        from ieiw.quality.scoring import read_scores
        from ieiw.storage import fs

        quality = _config(config)
        report = write_report(
            candidates,
            read_scores(scores or default_scores_url(candidates)),
            final,
            out or fs.join(final, "report"),
            quality.policy,
            quality.report_images,
        )
        typer.echo(json.dumps(report["files"], indent=2))

    register_judge(app)


def _judge_config(path: Path | None):
    judge = _config(path).scoring.judge
    if judge is None:
        raise typer.BadParameter("the config has no quality.scoring.judge section", param_hint="--config")
    return judge


def register_judge(app: typer.Typer) -> None:
    @app.command("judge-candidates")
    def judge_candidates_command(
        candidates: Annotated[
            str, typer.Argument(help="candidates folder (what `ieiw candidates --out` wrote)")
        ],
        config: ConfigOption = None,
        out: Annotated[
            str | None, typer.Option(help="judgements stage URL [<candidates>/quality/judgements]")
        ] = None,
        rebuild: Annotated[bool, typer.Option(help="replace judgements made with another judge")] = False,
    ) -> None:
        """Judge every review candidate with the config's quality.scoring.judge (cached; resumable), for
        the review app and `ieiw judge-agreement`."""
        from tqdm.auto import tqdm

        from ieiw.model.review.judging import judge_candidates
        from ieiw.quality.judge import Judge

        judge = Judge.from_config(_judge_config(config))
        with tqdm(desc="judge", unit="candidate") as bar:
            result = judge_candidates(judge, candidates, out, "yes" if rebuild else "no", bar.update)
        typer.echo(json.dumps(result, indent=2, default=str))

    @app.command("judge-agreement")
    def judge_agreement_command(
        candidates: Annotated[str, typer.Argument(help="candidates folder the review was made from")],
        db: Annotated[
            str,
            typer.Option("--db", envvar="IEIW_REVIEW_DB", help="review database URL, or $IEIW_REVIEW_DB"),
        ] = "sqlite:///ieiw-review.sqlite",
        judgements: Annotated[
            str | None, typer.Option(help="judgements stage [<candidates>/quality/judgements]")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
    ) -> None:
        """How the judge's scores rank the edits reviewers picked against those they rejected (AUC,
        within-sample AUC, Spearman): whether to trust the judge on this data."""
        from rich.console import Console
        from rich.table import Table

        from ieiw.model.review.judging import default_judgements_url, judge_agreement_report
        from ieiw.model.review.store import ReviewStore
        from ieiw.storage import manifest

        url = judgements or default_judgements_url(candidates)
        if not manifest.is_stage_folder(url):
            raise typer.BadParameter(
                f"no judgements at {url}: run `ieiw judge-candidates {candidates}` first"
            )
        store = ReviewStore(db, create=False)
        try:
            report = judge_agreement_report(store, url)
        finally:
            store.close()
        if as_json:
            typer.echo(json.dumps([r.as_dict() for r in report], indent=2))
            return

        def fmt(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        table = Table(
            "score", "picked", "rejected", "unscored", "samples", "AUC", "AUC within samples", "Spearman"
        )
        for row in report:
            table.add_row(
                row.score,
                str(row.picked),
                str(row.rejected),
                str(row.unscored),
                str(row.samples),
                fmt(row.auc),
                fmt(row.auc_within),
                fmt(row.spearman),
            )
        console = Console()
        console.print(table)
        console.print(
            "AUC: how often a picked edit scores above a rejected one (0.5 is chance); Spearman: the score "
            "against the share of reviewers who picked the edit."
        )


def _embed_reference_images(inputs, out_dir: Path, features: str, inception_checkpoint, quality) -> str:
    from ieiw.quality.embeddings import ClipEmbedder
    from ieiw.quality.giqa_references import iter_reference_images, write_reference_embeddings

    if features == "inception":
        from ieiw.quality.inception import InceptionFeatures

        if inception_checkpoint is None:
            raise typer.BadParameter("--features inception needs --inception-checkpoint")
        extractor = InceptionFeatures.from_checkpoint(inception_checkpoint)
    elif features == "clip":
        extractor = ClipEmbedder.from_config(quality.scoring.embedder)
    else:
        raise typer.BadParameter(f"unknown features {features!r}: clip or inception")
    result = write_reference_embeddings(
        iter_reference_images(list(inputs)), extractor.embed_images, str(out_dir)
    )
    typer.echo(f"embedded {result['embedded']} reference images, {result['corrupt']} unreadable")
    return str(out_dir)
