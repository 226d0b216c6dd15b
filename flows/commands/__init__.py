"""`ieiw` subcommands, one module per area, each exposing ``register(app)``."""

from collections.abc import Callable

import typer

from ieiw.flows.commands import model, multitask, ops, preferences, quality, replacement, review, web

AREAS: list[Callable[[typer.Typer], None]] = [
    ops.register,
    replacement.register,
    web.register,
    multitask.register,
    review.register,
    preferences.register,
    quality.register,
    model.register,
]
