"""Command output as plain words, whatever the terminal width rich wrapped it to."""

from __future__ import annotations

import re

_BOX = re.compile(r"[│┃║╭╮╰╯─━═┌┐└┘├┤┬┴┼]")


def words(output: str) -> str:
    """``output`` with rich's box drawing removed and every run of whitespace (line breaks included)
    collapsed to one space, so a message can be matched however it was wrapped."""
    return " ".join(_BOX.sub(" ", output).split())
