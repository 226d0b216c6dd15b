"""``ieiw`` quality commands: score, filter, build-giqa-index, quality-report, judge-candidates,
judge-agreement.

Registered by ``flows/cli.py`` with ``register(app)``. ``--config`` is a build config (read by the one
loader, :func:`ieiw.flows.config.load_config`) whose ``quality:`` section configures scoring and the
policy and whose ``runner:`` section says where batches run; without it, the defaults. ``score`` and
``filter`` run their stage (:class:`~ieiw.quality.scoring.ScoreStage`,
:class:`~ieiw.quality.filtering.FilterStage`) through the one runner as a flow run of its own, at the
places of the build their candidates belong to (:meth:`ieiw.storage.layout.BuildLayout.of_stage`), and
print its outcome in one line (``--json``: the whole summary). :func:`publish_quality_artifacts` shows
what a score or filter run found in the Prefect UI (score means and histograms; the filter's outcomes,
histograms before and after, and links to the report's pages).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ieiw.flows.config import RunnerConfig
    from ieiw.quality.config import QualityConfig
    from ieiw.storage.runner import StageSummary
    from ieiw.storage.stage import Stage

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="build config YAML (its quality: and runner: sections)")
]
RebuildOption = Annotated[
    bool, typer.Option("--rebuild", help="rebuild the stage, whatever it holds (caches are kept)")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the stage's summary as JSON")]


def _load(path: Path | None) -> tuple[QualityConfig, RunnerConfig]:
    """The quality and runner sections of the build config at ``path`` (defaults without one)."""
    from ieiw.flows.config import RunnerConfig, load_config
    from ieiw.quality.config import QualityConfig

    if path is None:
        return QualityConfig(), RunnerConfig()
    config = load_config(path)
    return config.section("quality"), config.runner


def _config(path: Path | None) -> QualityConfig:
    return _load(path)[0]


def run_quality_stage(stage: Stage, runner: RunnerConfig, rebuild: bool) -> StageSummary:
    """Run a score or filter stage as its own flow run on the configured (or a local) Prefect server
    (the flow run shows what it found)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ieiw.flows.server import ensure_server
    from ieiw.flows.stage_flow import run_stage_flow

    with temporary_settings(updates={PREFECT_API_URL: ensure_server()}):
        return run_stage_flow(stage, runner, "yes" if rebuild else "no")


def _print(stage: Stage, summary: StageSummary, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    else:
        typer.echo(f"{stage.name}: {summary.outcome()}")


def register(app: typer.Typer) -> None:
    @app.command("score")
    def score_command(
        candidates: Annotated[str, typer.Argument(help="candidate stage URL (holds shards/ and manifest/)")],
        config: ConfigOption = None,
        scores: Annotated[
            str | None, typer.Option(help="scores stage URL [<build>/scores/<generator>]")
        ] = None,
        rebuild: RebuildOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """Embed and score committed candidate shards (resumable: scored shards are skipped)."""
        from ieiw.quality.scoring import ScoreStage
        from ieiw.storage.layout import BuildLayout, generator_name

        quality, runner = _load(config)
        layout = BuildLayout.of_stage(candidates)
        stage = ScoreStage(quality, candidates, scores or layout.scores(generator_name(candidates)), layout)
        _print(stage, run_quality_stage(stage, runner, rebuild), as_json)

    @app.command("filter")
    def filter_command(
        candidates: Annotated[str, typer.Argument(help="candidate stage URL")],
        out: Annotated[str, typer.Argument(help="final stage URL (shards and manifest)")],
        config: ConfigOption = None,
        scores: Annotated[
            str | None, typer.Option(help="scores stage URL [<build>/scores/<generator>]")
        ] = None,
        report: Annotated[str | None, typer.Option(help="report URL [<build>/reports/<generator>]")] = None,
        rebuild: RebuildOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """Apply the filter policy to scored candidates: the final shards, manifest and report."""
        from ieiw.quality.filtering import FilterStage
        from ieiw.storage.layout import BuildLayout, generator_name
        from ieiw.storage.stage_folder import read_record

        quality, runner = _load(config)
        layout = BuildLayout.of_stage(candidates)
        generator = generator_name(candidates)
        scores_url = scores or layout.scores(generator)
        if read_record(scores_url) is None:
            raise typer.BadParameter(
                f"no scores at {scores_url}: run `ieiw score {candidates}` first", param_hint="--scores"
            )
        report_url = report or layout.report(generator)
        stage = FilterStage(quality, candidates, scores_url, out, report_url, layout)
        summary = run_quality_stage(stage, runner, rebuild)
        _print(stage, summary, as_json)
        if not as_json:
            typer.echo(f"report: {report_url}")

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
        scores: Annotated[
            str | None, typer.Option(help="scores stage URL [<build>/scores/<generator>]")
        ] = None,
        out: Annotated[str | None, typer.Option(help="report URL [<build>/reports/<generator>]")] = None,
    ) -> None:
        """(Re)write the quality report: histograms, drop counts, dropped samples, gallery."""
        from ieiw.quality.report import write_report
        from ieiw.quality.scoring import read_scores
        from ieiw.storage.layout import BuildLayout, generator_name

        quality = _config(config)
        layout = BuildLayout.of_stage(candidates)
        generator = generator_name(candidates)
        report = write_report(
            candidates,
            read_scores(scores or layout.scores(generator)),
            final,
            out or layout.report(generator),
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

        judge = _judge_config(config)  # the judgements stage loads the judge itself, once per worker
        with tqdm(desc="judge", unit="candidate") as bar:
            result = judge_candidates(judge, candidates, out, "yes" if rebuild else "no", bar.update)
        typer.echo(json.dumps(result.to_dict(), indent=2, default=str))

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


# ------------------------------------------------------------------------------------ artifacts


def publish_quality_artifacts(stage: Stage, summary: StageSummary) -> None:
    """What a score or filter run found, as Prefect artifacts (nothing for a run that had nothing to
    do): a score run's means per task and score histograms; a filter run's outcomes by task, histograms
    before and after, and links to the report's pages. Keys are the stage's (``score-removal-means``)."""
    from ieiw.flows.stage_flow import artifact_key

    if summary.skipped or not summary.extra:
        return
    kind = stage.name.split(" ", 1)[0]
    key = artifact_key(stage.name)
    if kind == "score":
        _publish_scores(stage, summary, key)
    elif kind == "filter":
        _publish_filter(stage, summary, key)


def _publish_scores(stage: Stage, summary: StageSummary, key: str) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from ieiw.quality.report import score_histograms
    from ieiw.quality.scoring import read_scores

    totals = summary.extra
    rows = [{"task": task, **means} for task, means in totals.get("mean_by_task", {}).items()]
    create_table_artifact(
        rows or [{"task": "none"}],
        key=f"{key}-means",
        description=f"{stage.name}: {totals.get('samples', 0)} scored samples, errors {totals.get('errors')}",
    )
    scores = read_scores(stage.url)
    histograms = score_histograms(scores[scores["error"].isna()], scores.iloc[0:0])
    if histograms:
        create_markdown_artifact(
            markdown_images(histograms),
            key=f"{key}-histograms",
            description=f"{stage.name}: score histograms per task (before filtering)",
        )


def _publish_filter(stage: Stage, summary: StageSummary, key: str) -> None:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    from ieiw.storage import fs

    files: dict[str, str] = summary.extra.get("report", {})
    create_table_artifact(
        summary.extra.get("outcomes") or [{"outcome": "none"}],
        key=f"{key}-outcomes",
        description=f"{stage.name}: every candidate's outcome (kept or drop reason) by task",
    )
    pngs = {
        name.removeprefix("hist_"): fs.read_bytes(url)
        for name, url in files.items()
        if name.startswith("hist_")
    }
    if pngs:
        create_markdown_artifact(
            markdown_images(pngs),
            key=f"{key}-histograms",
            description=f"{stage.name}: score histograms per task, before (grey) and after (blue)",
        )
    for name in ("index_html", "dropped_html", "gallery_html"):
        url = files.get(name)
        if url:
            link = url if "://" in url else Path(url).resolve().as_uri()
            create_link_artifact(
                link, link_text=name.replace("_html", ""), key=f"{key}-{name.replace('_', '-')}"
            )


def markdown_images(pngs: dict[str, bytes]) -> str:
    """Markdown with the PNGs inlined, for the Prefect UI."""
    return "\n\n".join(
        f"### {name}\n\n![{name}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
        for name, png in pngs.items()
    )
