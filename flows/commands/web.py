"""`ieiw crawl`: the web_edits stage from a build config's `web_edits:` section or command-line options.

The config is read by the one loader (:func:`ieiw.flows.config.load_config`); options override its
section. The stage runs through the one runner as its own flow run (:func:`run_crawl`), and
:func:`publish_crawl` shows what the crawl did (posts, pairs, drops, downloads, requests per host) as
artifacts, from the stage's summary alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from ieiw.flows.config import BuildConfig, RunnerConfig
    from ieiw.pipelines.web.config import WebEditsConfig
    from ieiw.storage.runner import StageSummary
    from ieiw.storage.shards import ShardSpec
    from ieiw.storage.stage_folder import Rebuild

console = Console()
COMMAND_LINE = "the command line"


def load_web_config(
    path: Path | None, options: dict[str, Any]
) -> tuple[WebEditsConfig, str, BuildConfig | None]:
    """(the web_edits section with the options applied, the output folder, the build config if any).

    A problem in the file, in an option or a missing dump is a one-line
    :class:`~ieiw.storage.config.ConfigError`."""
    from pydantic import ValidationError

    from ieiw.flows.config import load_config
    from ieiw.pipelines.web.config import WebEditsConfig
    from ieiw.storage.config import ConfigError, describe_validation, missing_inputs

    build = load_config(path) if path is not None else None
    raw: dict[str, Any] = {}
    if build is not None:
        raw = build.section("web_edits").model_dump(mode="json")
    source = raw.setdefault("source", {"kind": "reddit"})
    submissions = [os.path.abspath(p) for p in options.get("submissions") or []]
    comments = [os.path.abspath(p) for p in options.get("comments") or []]
    if submissions or comments:  # dumps named on the command line replace the configured source
        kept = {k: source[k] for k in ("subreddits", "index_dir") if source.get(k)}
        raw["source"] = source = {
            "kind": "reddit_dump",
            "submissions": submissions,
            "comments": comments,
            **kept,
        }
    if options.get("subreddits"):
        source["subreddits"] = list(options["subreddits"])
    for key in ("max_posts", "batch_size"):
        if options.get(key) is not None:
            raw[key] = options[key]
    if options.get("cache_dir"):
        cache = str(options["cache_dir"])
        raw.setdefault("download", {})["cache_dir"] = cache if "://" in cache else os.path.abspath(cache)
    where = str(path) if path is not None else COMMAND_LINE
    try:
        config = WebEditsConfig.model_validate(raw)
    except ValidationError as error:
        lines = describe_validation(error, WebEditsConfig, raw)
        raise ConfigError(where, [f"web_edits.{line}" for line in lines]) from None
    problems = missing_inputs(config, "web_edits")
    if problems:
        raise ConfigError(where, problems)
    output = os.path.abspath(options["output"]) if options.get("output") else build and build.output
    if not output:
        raise ConfigError(
            where, ["output: required, not given (give --output or an `output:` in the config)"]
        )
    return config, output, build


def run_crawl(
    config: WebEditsConfig,
    output: str,
    shards: ShardSpec | None = None,
    runner: RunnerConfig | None = None,
    rebuild: Rebuild = "no",
    task_runner: Any = None,
) -> StageSummary:
    """Crawl into ``<output>/web_edits`` (shards, manifest, crawl state) through the one runner (its flow
    run shows what the crawl did); committed batches are never redone, deferred posts are retried. The
    per-host limits hold for every process of the run (:func:`~ieiw.flows.crawl_limits.crawl_limits`)."""
    from ieiw.flows.crawl_limits import crawl_limits
    from ieiw.flows.stage_flow import run_stage_flow
    from ieiw.pipelines.web.stage import WebEditsStage
    from ieiw.storage.layout import BuildLayout

    limits = crawl_limits(config.download, runner)
    stage = WebEditsStage(config, BuildLayout(output).generator("web_edits"), shards, limits)
    return run_stage_flow(stage, runner, rebuild, task_runner)


def crawl_counts(summary: StageSummary) -> dict[str, Any]:
    """What a web_edits run did, from its summary: the batches' counts (``posts_*``, ``downloads_*``,
    ``downloads/<outcome>``, ``requests/<host>``) regrouped, beside what the listing saw and what the
    crawl state holds (the stage's ``finish``)."""
    counts, state = summary.counts, dict(summary.extra.get("crawl") or {})
    listing_requests = state.pop("listing_requests_by_host", {})
    requests = {k.removeprefix("requests/"): n for k, n in counts.items() if k.startswith("requests/")}
    for host, n in listing_requests.items():
        requests[host] = requests.get(host, 0) + n
    return {
        **state,
        **{k: n for k, n in counts.items() if "/" not in k},
        "downloads_this_run": {
            k.removeprefix("downloads/"): n for k, n in counts.items() if k.startswith("downloads/")
        },
        "requests_by_host": dict(sorted(requests.items())),
    }


def publish_crawl(summary: StageSummary) -> None:
    """Posts seen, pairs kept, drops and downloads by reason, requests per host: as UI artifacts."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from ieiw.flows.stage_flow import artifact_key

    crawl = crawl_counts(summary)
    rows = [
        {"what": "posts seen", "reason": "", "count": crawl.get("posts_seen", 0)},
        {"what": "posts already done", "reason": "", "count": crawl.get("posts_already_done", 0)},
        {"what": "posts retried", "reason": "", "count": crawl.get("posts_retried", 0)},
        {"what": "pairs kept", "reason": "", "count": summary.kept},
    ]
    rows += [{"what": "dropped", "reason": r, "count": n} for r, n in summary.dropped.items()]
    rows += [
        {"what": "deferred this run", "reason": k.removeprefix("posts_deferred_"), "count": n}
        for k, n in sorted(crawl.items())
        if k.startswith("posts_deferred_")
    ]
    rows += [
        {"what": "waiting for the next run", "reason": r, "count": n}
        for r, n in crawl.get("posts_waiting", {}).items()
    ]
    rows += [{"what": "downloads", "reason": r, "count": n} for r, n in crawl["downloads_this_run"].items()]
    key = artifact_key(summary.stage)
    create_table_artifact(
        rows, key=f"{key}-crawl", description=f"{summary.stage}: posts, pairs, drops, downloads"
    )
    lines = [f"# {summary.stage} crawl", "", "| host | requests |", "|---|---|"]
    lines += [f"| {h} | {n} |" for h, n in crawl["requests_by_host"].items()]
    lines += [
        "",
        f"Downloads fetched this run: {crawl.get('downloads_fetched', 0)}, "
        f"reused from the state file: {crawl.get('downloads_reused', 0)}",
    ]
    create_markdown_artifact(
        "\n".join(lines), key=f"{key}-requests", description=f"{summary.stage}: requests made"
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def crawl(
        config: Path = typer.Argument(
            None, exists=True, dir_okay=False, help="build config YAML with a web_edits section"
        ),
        output: str = typer.Option(
            None, "-o", "--output", help="build output folder (web_edits/ goes inside)"
        ),
        subreddit: list[str] = typer.Option(None, "--subreddit", help="subreddit to crawl (repeatable)"),
        submissions: list[str] = typer.Option(
            None, "--submissions", help="submissions dump .zst (repeatable)"
        ),
        comments: list[str] = typer.Option(None, "--comments", help="comments dump .zst (repeatable)"),
        max_posts: int = typer.Option(None, help="stop after this many posts"),
        batch_size: int = typer.Option(None, help="posts per committed batch"),
        cache_dir: str = typer.Option(None, help="download cache folder or URL (every worker reaches it)"),
        rebuild: bool = typer.Option(False, "--rebuild", help="rebuild the stage, whatever it holds"),
        json_summary: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ) -> None:
        """Crawl photoshop-request posts (live Reddit or dumps) into web_edit pairs; reruns resume."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from ieiw.flows.server import ensure_server, ui_url

        web_config, out, build = load_web_config(
            config,
            {
                "output": output,
                "subreddits": subreddit,
                "submissions": submissions,
                "comments": comments,
                "max_posts": max_posts,
                "batch_size": batch_size,
                "cache_dir": cache_dir,
            },
        )
        api_url = ensure_server()
        if not json_summary:
            console.print(f"Prefect UI: [bold]{ui_url(api_url)}[/bold]")
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            summary = run_crawl(
                web_config,
                out,
                build.shards if build is not None else None,
                build.runner if build is not None else None,
                "yes" if rebuild else "no",
            )
        if json_summary:
            print(json.dumps(summary.to_dict(), default=str))
            return
        crawl_stats = crawl_counts(summary)
        console.print(
            f"web_edits: {crawl_stats.get('posts_seen', 0)} posts seen, kept {summary.kept} pairs, "
            f"dropped {summary.dropped}"
        )
        console.print(f"downloads this run: {crawl_stats['downloads_this_run']}")
        console.print(f"manifest: {summary.manifest}")
