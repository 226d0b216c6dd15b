"""An on-disk cache of LLM answers keyed by the whole prompt, so a rerun pays nothing.

One small JSON file per prompt under ``<directory>/<k[:2]>/<k>.json`` (any fsspec URL), written
atomically; only answers that passed validation are stored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ieiw.storage import fs


def prompt_key(model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
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
        url = self._url(key)
        if not fs.exists(url):
            return None
        try:
            return json.loads(fs.read_bytes(url))["answer"]
        except (ValueError, KeyError):
            return None  # an unreadable entry is asked again and overwritten

    def put(self, key: str, answer: Any) -> None:
        fs.write_bytes_atomic(self._url(key), json.dumps({"answer": answer}).encode("utf-8"))
