"""`ieiw replacement CONFIG`: object-replacement pairs (and their object database) from a build config.

The file is a build config (:func:`ieiw.flows.config.load_config`: ``output``, optional ``shards`` and
``runner``) with a ``replacement:`` section; other sections are ignored. Its two stages
(:func:`ieiw.flows.stages.replacement`: the object database, then the pairs) run through the one runner,
each as its own flow run, on the task runner of its ``runner:`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ieiw.flows.config import BuildConfig
    from ieiw.storage.runner import StageSummary
    from ieiw.storage.stage import Stage

console = Console()


def replacement_stages(config: BuildConfig, build_database: bool = False) -> list[Stage]:
    """The object database's stage and the pairs' (:func:`ieiw.flows.stages.replacement`).
    ``build_database``: asked for by name (``--database-only``, ``--rebuild-database``), the database is
    built even with ``database.build_if_missing`` off."""
    from ieiw.flows.stages import replacement
    from ieiw.storage.layout import BuildLayout

    section = config.section("replacement")
    if build_database:
        database = section.database.model_copy(update={"build_if_missing": True})
        config = config.model_copy(update={"replacement": section.model_copy(update={"database": database})})
    return replacement(config, BuildLayout(config.out()))


def run_replacement(
    config: BuildConfig,
    database_only: bool = False,
    rebuild: bool = False,
    rebuild_database: bool = False,
) -> list[StageSummary]:
    """Run the stages against the configured (or a local) Prefect server; returns their summaries.

    A stage made with other settings stops the command before any work, naming what changed, unless
    told to rebuild it: ``rebuild`` the pairs, ``rebuild_database`` the object database (and so the
    pairs, which read it)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ieiw.flows.runners import build_task_runner
    from ieiw.flows.server import ensure_server, ui_url
    from ieiw.flows.stage_flow import run_stage_flow
    from ieiw.storage.runner import refuse_changed

    stages = replacement_stages(config, database_only or rebuild_database)
    if database_only:
        stages = stages[:1]
    database, *pairs = stages
    modes = {database.name: "yes" if rebuild_database else "no"}
    modes.update({p.name: "yes" if rebuild or rebuild_database else "no" for p in pairs})
    for stage in stages:  # a changed stage stops the command before any flow run starts
        if modes[stage.name] == "no":
            refuse_changed(stage)
    api_url = ensure_server()
    console.print(f"Prefect UI: [bold]{ui_url(api_url)}[/bold]")
    summaries = []
    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        build_task_runner(config.runner) as task_runner,
    ):
        for stage in stages:
            summary = run_stage_flow(stage, config.runner, modes[stage.name], task_runner)
            console.print(f"[bold]{escape(stage.name)}[/bold]: {escape(summary.outcome())}")
            summaries.append(summary)
    return summaries


def register(app: typer.Typer) -> None:
    @app.command("replacement")
    def replacement_command(
        config: Path = typer.Argument(
            ..., exists=True, dir_okay=False, help="build config YAML with a replacement: section"
        ),
        database_only: bool = typer.Option(
            False, "--database-only", help="only build the object database and its index"
        ),
        rebuild: bool = typer.Option(
            False, "--rebuild", help="rebuild the pairs even if they were made with other settings"
        ),
        rebuild_database: bool = typer.Option(
            False, "--rebuild-database", help="rebuild the object database (and so the pairs)"
        ),
    ) -> None:
        """Object-replacement pairs: SAM/SA-1B/Open Images regions, CLIP+FAISS references, painting."""
        from ieiw.flows.config import load_config
        from ieiw.storage.layout import OBJECT_DATABASE
        from ieiw.storage.stage_folder import StageChanged

        try:
            summaries = run_replacement(load_config(config), database_only, rebuild, rebuild_database)
        except StageChanged as changed:  # the message names the build's option; this command has its own
            flag = "--rebuild-database" if changed.stage == OBJECT_DATABASE else "--rebuild"
            console.print(f"With `ieiw replacement`, rebuild {changed.stage} with {flag}.")
            raise
        for summary in summaries:
            console.print(f"{summary.stage}: {summary.manifest}")
