"""The `ieiw` command line.

:func:`main` is the entry point: a config, a model or a stage that cannot be used as asked is one line
on stderr and exit status 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ieiw.flows.config import BuildConfig

app = typer.Typer(
    help="Build instruction-editing datasets (IEIW recipe) and train on them. "
    "Add --debug (first) to see the traceback of an error.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix from the message alone: printed as one line, exit 2."""
    from ieiw.flows.storage_errors import StorageWriteError
    from ieiw.pipelines.replacement.errors import DatabaseNotReady
    from ieiw.storage.config import ConfigError
    from ieiw.storage.lease import LeaseLost, StageBusy
    from ieiw.storage.models import ModelUnavailable
    from ieiw.storage.runner import WorkerMismatch
    from ieiw.storage.stage_folder import StageChanged, StageMissing

    return (
        ConfigError,
        StageChanged,
        StageBusy,
        LeaseLost,
        StorageWriteError,
        WorkerMismatch,
        ModelUnavailable,
        DatabaseNotReady,
        StageMissing,
    )


class _QuietUserErrors(logging.Filter):
    """Prefect logs a flow run's exception with its traceback; for an error the user fixes from its
    message, the message is enough (the CLI prints it once more, as one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and isinstance(error, user_errors()):
            record.exc_info, record.exc_text = None, None
            record.msg, record.args = "stopped: %s", (error,)
        return True


def main(argv: list[str] | None = None) -> None:
    """``ieiw``: the app, with user errors as one line (``--debug`` anywhere: the traceback)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not debug:
        for name in ("prefect.flow_runs", "prefect.task_runs"):
            logging.getLogger(name).addFilter(_QuietUserErrors())
    try:
        app(args=args, prog_name="ieiw", standalone_mode=True)
    except SystemExit:
        raise
    except Exception as error:
        if debug or not isinstance(error, user_errors()):
            raise
        print(f"ieiw: {error}", file=sys.stderr)
        raise SystemExit(2) from None


@app.command()
def server(host: str = "127.0.0.1", port: int = 4200) -> None:
    """Start a local Prefect server (SQLite) in the foreground; the UI is at http://HOST:PORT."""
    from ieiw.flows.server import prefect_executable

    raise typer.Exit(
        subprocess.call([prefect_executable(), "server", "start", "--host", host, "--port", str(port)])
    )


def _run_build(
    config: BuildConfig, stages: list[str] | None, rebuild: list[str] | None = None, on_change: str = "no"
) -> dict:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ieiw.flows.build import ieiw_build
    from ieiw.flows.server import ensure_server, ui_url
    from ieiw.flows.stages import build_stages, rebuild_modes
    from ieiw.storage.runner import refuse_changed

    everything = build_stages(config)
    modes = rebuild_modes(everything, rebuild, on_change)
    for stage in everything:  # a changed stage stops the build before any flow run starts
        if modes[stage.name] == "no":
            refuse_changed(stage)

    api_url = ensure_server()
    console.print(f"Prefect UI: [bold]{ui_url(api_url)}[/bold]")
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return ieiw_build(config, stages, rebuild=rebuild, on_change=on_change)


@app.command()
def build(
    config: str = typer.Argument(..., help="build config YAML (or `demo`, the packaged demo)"),
    stage: list[str] = typer.Option(None, "--stage", help="run only these stages (repeatable)"),
    rebuild: list[str] = typer.Option(
        None,
        "--rebuild",
        help="rebuild this stage and everything downstream of it, whatever it holds (repeatable): "
        "removal, replacement, object_database, web_edits, multitask, score, filter",
    ),
    plan: bool = typer.Option(
        False,
        "--plan",
        help="print the stages, the models each loads and where, the input counts, what is done and "
        "the GPU-hours per stage, then stop (no server, no work)",
    ),
) -> None:
    """Run a build from its YAML config against the configured (or a local) Prefect server.

    A stage whose output was made with other settings stops the build before any work and says what
    changed; --rebuild STAGE rebuilds it, or give the changed config its own output. --plan says what
    the build would do and cost, first.
    """
    from ieiw.flows.config import load_config

    loaded = load_config(config)
    loaded.out()
    if plan:
        from ieiw.flows.plan import make_plan, print_plan

        print_plan(make_plan(loaded, stage or None), console)
        return
    result = _run_build(loaded, stage or None, rebuild or None)
    _print_stages(result)
    console.print(f"Gallery: [bold]{result['gallery']}[/bold]")


def _print_stages(result: dict) -> None:
    """What each stage did in this run, in words: one line per stage."""
    from ieiw.storage.runner import StageSummary

    for name, summary in result["stages"].items():
        console.print(f"[bold]{escape(name)}[/bold]: {escape(StageSummary(**summary).outcome())}")


@app.command()
def demo(
    output: Path = typer.Option(
        None, "--output", help="folder the demo writes to (default: $IEIW_DEMO_DIR or ./.ieiw/demo)"
    ),
    plan: bool = typer.Option(False, "--plan", help="print what the demo would do, then stop"),
) -> None:
    """Build the demo dataset from the bundled photographs (the packaged demo config), then the gallery."""
    from ieiw.flows.config import load_demo_config

    config = load_demo_config(output)
    if plan:
        from ieiw.flows.plan import make_plan, print_plan

        print_plan(make_plan(config), console)
        return
    result = _run_build(config, None, on_change="changed")  # the demo owns its folder: rebuild what changed
    _print_stages(result)
    console.print(f"Shards: {config.output}/<stage>/shards (read them through <stage>/manifest.parquet)")
    console.print(f"Open the gallery in a browser: [bold]file://{result['gallery']}[/bold]")


@app.command()
def inspect(
    shards: list[str] = typer.Argument(..., help="shard files or folders (or a stage output folder)"),
    n: int = typer.Option(5, help="how many samples to list"),
) -> None:
    """Counts by task and instruction source, drops by reason, and a few samples."""
    from ieiw.storage import manifest
    from ieiw.storage.shards import expand_shard_urls, iter_metas

    builds = [path for path in shards if _build_stages(path)]
    if builds:
        for path in builds:
            console.print(f"{escape(path)} is a build's folder; name one of its stages:")
            for stage, rows, kept in _build_stages(path):
                console.print(f"  ieiw inspect {escape(stage)}   ({kept} samples kept of {rows} rows)")
        raise typer.Exit(2)
    urls = expand_shard_urls(_shard_inputs(shards))
    tasks: collections.Counter = collections.Counter()
    sources: collections.Counter = collections.Counter()
    table = Table("key", "task", "instruction", "dataset", "image")
    for index, meta in enumerate(iter_metas(urls)):
        tasks[str(meta.task)] += 1
        sources[meta.instruction_source.split("#")[0]] += 1
        if index < n:
            table.add_row(
                meta.key, str(meta.task), meta.instruction, meta.provenance.dataset, meta.provenance.image_id
            )
    console.print(f"{len(urls)} shards, {sum(tasks.values())} samples")
    console.print("by task: " + ", ".join(f"{k}={v}" for k, v in sorted(tasks.items())))
    console.print("by instruction source: " + ", ".join(f"{k}={v}" for k, v in sorted(sources.items())))
    for folder in shards:
        frame = manifest.read_manifest(folder)
        if len(frame):
            dropped = frame[~frame["kept"]]["drop_reason"].value_counts().to_dict()
            console.print(f"manifest {folder}: {len(frame)} rows, dropped by reason: {dropped}")
    console.print(table)


def _build_stages(path: str) -> list[tuple[str, int, int]]:
    """``(stage folder, manifest rows, kept)`` of the stages in a build's folder (empty when ``path`` is
    a stage folder itself, or holds none)."""
    from ieiw.storage import manifest

    if "://" in path or not os.path.isdir(path) or manifest.is_stage_folder(path):
        return []
    found = []
    for root, dirs, _ in os.walk(path):
        inside = ("shards", "manifest", "inputs")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in inside)
        if root != path and manifest.is_stage_folder(root):
            frame = manifest.read_manifest(root)
            kept = int(frame["kept"].sum()) if "kept" in frame and len(frame) else 0
            found.append((root, len(frame), kept))
            dirs[:] = []
    return found


def _shard_inputs(paths: list[str]) -> list[str]:
    """A stage output folder (with ``shards/``) stands for its shards."""
    from ieiw.storage import manifest

    out = []
    for path in paths:
        nested = os.path.join(path, manifest.SHARD_DIR)
        out.append(nested if "://" not in path and os.path.isdir(nested) else path)
    return out


@app.command()
def gallery(
    shards: list[str] = typer.Argument(..., help="shard files or folders"),
    output: str = typer.Option(..., "-o", "--output", help="HTML file to write"),
    limit: int = typer.Option(100, help="at most this many samples"),
    skip: int = typer.Option(0, help="skip this many samples first"),
) -> None:
    """Write an HTML page of pairs (source | target | instruction) to open in a browser."""
    from ieiw.storage.gallery import write_gallery
    from ieiw.storage.shards import expand_shard_urls, iter_samples

    samples = itertools.islice(iter_samples(expand_shard_urls(_shard_inputs(shards))), skip, None)
    write_gallery(samples, output, limit=limit)
    console.print(f"wrote {output}")


def _register_area_commands() -> None:
    from ieiw.flows.commands import AREAS

    for register in AREAS:
        register(app)


_register_area_commands()

if __name__ == "__main__":
    main()
