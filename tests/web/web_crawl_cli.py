"""Runs the `ieiw crawl` command in its own process (the resume test kills it with SIGKILL)."""

import typer

from ieiw.flows.commands.web import register

app = typer.Typer()


@app.callback()
def main() -> None:
    """ieiw (only the web commands)."""


register(app)

if __name__ == "__main__":
    app()
