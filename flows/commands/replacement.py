"""`ieiw replacement CONFIG`: object-replacement pairs (and their object database) from a YAML file.

The file is a build config (``output``, optional ``shards`` and ``runner``) with a ``replacement:``
section (:class:`ieiw.pipelines.replacement.config.ReplacementConfig`); other sections are ignored.
Relative paths are relative to the file; a relative model name that is not a file stays a hub id.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from ieiw.flows.config import RunnerConfig
from ieiw.pipelines.replacement.config import ReplacementConfig
from ieiw.storage.shards import ShardSpec

console = Console()


class ReplacementBuild(BaseModel):
    model_config = ConfigDict(extra="ignore")

    output: str
    shards: ShardSpec = Field(default_factory=ShardSpec)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    replacement: ReplacementConfig


def _expand(value: str) -> str:
    return os.path.expanduser(os.path.expandvars(value))


def load_replacement_build(path: str | os.PathLike) -> ReplacementBuild:
    """Read the YAML file and make its relative paths relative to the file's folder."""
    path = Path(path)
    base = path.resolve().parent
    with open(path, encoding="utf-8") as handle:
        build = ReplacementBuild.model_validate(yaml.safe_load(handle) or {})

    def output(value: str) -> str:
        value = _expand(value)
        return value if "://" in value or os.path.isabs(value) else str((base / value).resolve())

    def entry(value: str) -> str:
        value = _expand(value)
        if "://" in value or os.path.isabs(value):
            return value
        candidate = base / value
        return str(candidate.resolve()) if candidate.exists() or value.startswith(".") else value

    build.output = output(build.output)
    build.replacement.resolve_paths(entry, output)
    return build


def run_replacement(
    build: ReplacementBuild,
    database_only: bool = False,
    rebuild: bool = False,
    rebuild_database: bool = False,
) -> dict:
    """Run the flow against the configured (or a local) Prefect server, with the configured task runner.

    A stage made with other settings stops the run, naming what changed, unless told to rebuild it:
    ``rebuild`` the pairs, ``rebuild_database`` the object database (and so the pairs)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ieiw.flows.replacement import object_database, replacement
    from ieiw.flows.runners import make_task_runner
    from ieiw.flows.server import ensure_server, ui_url

    api_url = ensure_server()
    console.print(f"Prefect UI: [bold]{ui_url(api_url)}[/bold]")
    task_runner = make_task_runner(build.runner)
    database_mode = "yes" if rebuild_database else "no"
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        if database_only:
            return object_database.with_options(task_runner=task_runner)(
                build.replacement, build.output, build.shards, build.runner, rebuild=database_mode
            )
        return replacement.with_options(task_runner=task_runner)(
            build.replacement,
            build.output,
            build.shards,
            build.runner,
            rebuild="yes" if rebuild else "no",
            rebuild_database=database_mode,
        )


def register(app: typer.Typer) -> None:
    @app.command("replacement")
    def replacement_command(
        config: Path = typer.Argument(
            ..., exists=True, dir_okay=False, help="YAML with a replacement: section"
        ),
        database_only: bool = typer.Option(
            False, "--database-only", help="only build the object database + index"
        ),
        rebuild: bool = typer.Option(
            False, "--rebuild", help="rebuild the pairs even if they were made with other settings"
        ),
        rebuild_database: bool = typer.Option(
            False, "--rebuild-database", help="rebuild the object database (and so the pairs)"
        ),
    ) -> None:
        """Object-replacement pairs: SAM/SA-1B/Open Images regions, CLIP+FAISS references, painting."""
        from rich.markup import escape

        from ieiw.storage.lease import StageBusy
        from ieiw.storage.stage_folder import StageChanged

        try:
            summary = run_replacement(
                load_replacement_build(config), database_only, rebuild, rebuild_database
            )
        except (StageChanged, StageBusy) as refused:
            console.print(f"[bold red]Stopped:[/bold red] {escape(str(refused))}")
            if isinstance(refused, StageChanged):
                flag = "--rebuild-database" if refused.stage == "object_database" else "--rebuild"
                console.print(f"With `ieiw replacement`, rebuild it with {flag}.")
            raise typer.Exit(2) from None
        if database_only:
            console.print(
                f"object database: {summary['objects']} objects ({summary['index']} index), "
                f"dropped {summary['dropped']}"
            )
            console.print(f"Database: {summary['database']}")
            return
        console.print(f"replacement: kept {summary['kept']}, dropped {summary['dropped']}")
        console.print(f"Manifest: {summary['manifest']}")
