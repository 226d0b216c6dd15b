"""An on-disk, content-addressed cache of model answers, so a rerun pays nothing.

Keyed by a digest of everything that determines the answer (the whole prompt, the model, the images
by hash): one small JSON file per key under ``<directory>/<k[:2]>/<k>.json`` (any fsspec URL),
written atomically. The same key always means the same question, so entries are never invalidated,
only added; an unreadable entry is asked again and overwritten. Only validated answers are stored.
Used by the LLM instruction writer (``pipelines``) and the VLM judge (``quality``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ieiw.storage import fs


def prompt_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "params": params}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class PromptCache:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _url(self, key: str) -> str:
        return fs.join(self.directory, key[:2], f"{key}.json")

    def get(self, key: str) -> Any | None:
        try:
            return json.loads(fs.read_bytes(self._url(key)))["answer"]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError):
            return None  # an unreadable entry is asked again and overwritten

    def put(self, key: str, answer: Any) -> None:
        fs.write_bytes_atomic(self._url(key), json.dumps({"answer": answer}).encode("utf-8"))
