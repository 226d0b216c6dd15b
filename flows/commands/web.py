"""`ieiw crawl`: run the web_edits flow from a YAML file or from command-line options."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer
import yaml
from rich.console import Console

console = Console()


def load_web_config(path: Path | None, options: dict) -> tuple[object, str]:
    """(WebEditsConfig, output) from YAML (a ``web_edits:`` section, or the bare section) and options."""
    from ieiw.pipelines.web.config import WebEditsConfig

    raw: dict = {}
    output: str | None = None
    if path is not None:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle) or {}
        output = document.get("output")
        raw = document.get("web_edits", document) if isinstance(document, dict) else {}
        raw = {k: v for k, v in raw.items() if k not in ("output", "name", "shards", "runner", "gallery")}
        if output and "://" not in output and not os.path.isabs(output):
            output = str((path.resolve().parent / output).resolve())
    if options.get("subreddits"):
        raw.setdefault("source", {"kind": "reddit"})["subreddits"] = options["subreddits"]
    if options.get("submissions") or options.get("comments"):
        raw["source"] = {
            "kind": "reddit_dump",
            "submissions": options.get("submissions") or [],
            "comments": options.get("comments") or [],
            **({"subreddits": options["subreddits"]} if options.get("subreddits") else {}),
        }
    raw.setdefault("source", {"kind": "reddit"})
    for key in ("max_posts", "batch_size"):
        if options.get(key) is not None:
            raw[key] = options[key]
    if options.get("cache_dir"):
        raw.setdefault("download", {})["cache_dir"] = options["cache_dir"]
    output = options.get("output") or output
    if not output:
        raise typer.BadParameter("give --output or an `output:` in the config")
    return WebEditsConfig.model_validate(raw), output


def register(app: typer.Typer) -> None:
    @app.command()
    def crawl(
        config: Path = typer.Argument(
            None,
            exists=True,
            dir_okay=False,
            help="YAML: a build config with a web_edits section, or the bare section",
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
        cache_dir: str = typer.Option(None, help="download cache folder"),
        json_summary: bool = typer.Option(False, "--json", help="print the summary as JSON"),
    ) -> None:
        """Crawl photoshop-request posts (live Reddit or dumps) into web_edit pairs; reruns resume."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from ieiw.flows.server import ensure_server, ui_url
        from ieiw.flows.web_edits import web_edits

        web_config, out = load_web_config(
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
            summary = web_edits(web_config, out)
        if json_summary:
            print(json.dumps(summary, default=str))
            return
        crawl_stats = summary.get("crawl", {})
        console.print(
            f"web_edits: {crawl_stats.get('posts_seen', 0)} posts seen, kept {summary['kept']} pairs, "
            f"dropped {summary['dropped']}"
        )
        console.print(f"downloads: {crawl_stats.get('downloads_by_outcome')}")
        console.print(f"manifest: {summary['manifest']}")
