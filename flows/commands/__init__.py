"""`ieiw` subcommands, one module per area, each exposing ``register(app)``."""

from collections.abc import Callable

import typer

AREAS: list[Callable[[typer.Typer], None]] = []
