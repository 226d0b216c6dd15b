"""A local server that speaks the Hugging Face hub's HTTP API, for the calls ``huggingface_hub`` makes.

Tests point ``HF_ENDPOINT`` at it and serve tiny models of the real classes, so the first download, the
cache and the pinning to a commit run as a user's first build would. It serves:

- ``GET /api/models/<repo>`` and ``/api/models/<repo>/revision/<rev>``: the model's info (its commit
  ``sha`` and its files), as ``HfApi.model_info`` / ``repo_info`` read it;
- ``GET /api/models/<repo>/tree/<rev>[/<path>]``: the file listing ``snapshot_download`` reads;
- ``HEAD``/``GET /<repo>/resolve/<rev>/<file>``: a file with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length`` headers, and byte ranges, as ``hf_hub_download`` reads it.

A repository is a folder of files committed as a new commit (:meth:`HubServer.commit`); a branch can be
moved to another commit, as when the model's authors push. ``requests`` counts what was asked.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubServer:
    """Repositories in memory: ``{repo: {"branches": {name: commit}, "commits": {commit: files}}}``."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: Counter = Counter()
        self.corrupt: set[tuple[str, str]] = set()  # (repo, file) served with other bytes than listed
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def commit(self, repo: str, folder: str | Path, branch: str = "main") -> str:
        """Commit every file under ``folder`` as the new head of ``branch``; returns the commit."""
        files = {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(Path(folder).rglob("*"))
            if p.is_file()
        }
        entry = self.repos.setdefault(repo, {"branches": {}, "commits": {}})
        digest = hashlib.sha1(
            repr(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()
        )
        commit = hashlib.sha1(f"{repo}{len(entry['commits'])}{digest.hexdigest()}".encode()).hexdigest()
        entry["commits"][commit] = files
        entry["branches"][branch] = commit
        return commit

    def resolve(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | None:
        entry = self.repos.get(repo)
        if entry is None:
            return None
        commit = entry["branches"].get(revision, revision)
        files = entry["commits"].get(commit)
        return (commit, files) if files is not None else None


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:  # quiet
        return

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, data: object) -> None:
        self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _missing(self, code: str, head: bool = False) -> None:
        self._send(404, json.dumps({"error": code}).encode(), {"X-Error-Code": code}, head=head)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        parts = [p for p in path.split("/") if p]
        self.hub.requests[f"{self.command} {'/'.join(parts[:2]) if parts[0] != 'api' else 'api'}"] += 1
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._api(parts[2:], head)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._file("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
        return self._missing("EntryNotFound", head)

    def _api(self, parts: list[str], head: bool) -> None:
        repo, rest = "/".join(parts[:2]), parts[2:]
        revision = rest[1] if len(rest) >= 2 else "main"
        found = self.hub.resolve(repo, urllib.parse.unquote(revision))
        if found is None:
            return self._missing("RepoNotFound" if repo not in self.hub.repos else "RevisionNotFound", head)
        commit, files = found
        if not rest or rest[0] == "revision":
            return self._json(
                {
                    "id": repo,
                    "modelId": repo,
                    "sha": commit,
                    "private": False,
                    "disabled": False,
                    "gated": False,
                    "tags": [],
                    "siblings": [{"rfilename": name} for name in sorted(files)],
                }
            )
        if rest[0] == "tree":
            prefix = "/".join(rest[2:])
            entries = [
                {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for name, data in sorted(files.items())
                if name.startswith(prefix)
            ]
            return self._json(entries)
        return self._missing("EntryNotFound", head)

    def _file(self, repo: str, revision: str, name: str, head: bool) -> None:
        found = self.hub.resolve(repo, revision)
        if found is None:
            return self._missing("RepoNotFound" if repo not in self.hub.repos else "RevisionNotFound", head)
        commit, files = found
        if name not in files:
            return self._missing("EntryNotFound", head)
        data = files[name]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        if (repo, name) in self.hub.corrupt:
            data = data[: len(data) // 2]
        headers = {"X-Repo-Commit": commit, "ETag": etag, "Accept-Ranges": "bytes"}
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            start = int(ranged[len("bytes=") :].split("-")[0] or 0)
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, data[start:], headers, head)
        return self._send(200, data, headers, head)
