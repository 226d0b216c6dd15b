"""Listing the files of a source folder."""

from __future__ import annotations

import os


def files_with_suffix(
    folder: str, suffixes: tuple[str, ...], *, ignore_case: bool = True, missing_ok: bool = False
) -> list[str]:
    """The names of the plain files of ``folder`` ending in one of ``suffixes``, sorted.

    ``ignore_case`` compares the lower-cased name (give lower-case suffixes); ``missing_ok`` makes a
    folder that does not exist an empty list instead of a ``FileNotFoundError``.
    """
    if missing_ok and not os.path.isdir(folder):
        return []
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if e.is_file() and (e.name.lower() if ignore_case else e.name).endswith(suffixes)
        )
