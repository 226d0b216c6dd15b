"""Read plain-data pickles (RefCOCO's ``refs(unc).p``) without ever resolving a global.

A pickle can only run code by naming a global (a class or function) that it then calls. The
unpickler here admits no global at all and no persistent ids, so a file holding only lists, dicts,
strings and numbers loads, and a crafted one is refused before anything runs.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for something beyond plain data."""


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler for built-in containers and scalars only."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"refused: the pickle asks for the global {module}.{name}; only plain data (lists, dicts, "
            "strings, numbers) is accepted, so this file was not loaded"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refused: the pickle asks for persistent object {pid!r}")


def load_plain_pickle(handle: BinaryIO) -> Any:
    """Load a plain-data pickle from an open binary file.

    Python 2 byte strings (RefCOCO's files were written by Python 2) come back as UTF-8 text.
    """
    return _text(PlainDataUnpickler(handle, encoding="bytes").load())


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_text(v) for v in value)
    return value


def load_plain_pickle_file(path: str) -> Any:
    with open(path, "rb") as handle:
        return load_plain_pickle(handle)


def loads_plain(data: bytes) -> Any:
    return load_plain_pickle(io.BytesIO(data))
