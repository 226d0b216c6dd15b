"""Optional dependencies that come in more than one build, imported with an install hint when absent.

FAISS ships as ``faiss-cpu`` or ``faiss-gpu-cu12``, two distributions that own the same ``faiss``
module; the package's ``cpu`` and ``gpu`` extras install exactly one of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAISS_HINT = (
    "FAISS is not installed: pip install 'ieiw-builder[cpu]' (faiss-cpu), or on a CUDA 12 machine "
    "pip install 'ieiw-builder[gpu]' (faiss-gpu-cu12, which replaces faiss-cpu)"
)


def import_faiss() -> ModuleType:
    """The ``faiss`` module, or an ImportError that says which extra to install."""
    try:
        return importlib.import_module("faiss")
    except ImportError as error:
        raise ImportError(FAISS_HINT) from error
