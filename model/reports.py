"""JSON reports of the model layer (metrics, summaries, mixes, export info) as strict JSON.

Python's ``json`` writes a float NaN as ``NaN``, which is not JSON: ``jq``, browsers and most other
readers refuse the file. A metric that could not be computed (no sample of its kind, no target caption)
is ``null`` here, and ``allow_nan=False`` makes any other non-finite number an error at write time
instead of an unreadable file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf; numpy scalars too) as None, in nested dicts,
    lists and tuples; numpy scalars and arrays become plain numbers and lists."""
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy scalars and arrays
        return finite(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, indent: int | None = 1, default: Any = None) -> str:
    """``value`` as strict JSON text (:func:`finite`, then ``allow_nan=False``)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False, default=default)


def write_json(path: str | os.PathLike, value: Any, indent: int | None = 1, default: Any = None) -> None:
    """Write ``value`` to ``path`` as strict JSON (:func:`to_json`)."""
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(to_json(value, indent, default))
