"""Model references, pinned before anything is fingerprinted, and loaded exactly as pinned everywhere.

A config names a model by a local path, a Hugging Face hub id (``owner/name``, or ``owner/name@rev``
for a branch, tag or commit) or a URL (``https://.../big-lama.pt``, optionally ``#md5=<hex>`` or
``#sha256=<hex>``). When a stage runs (and in ``--plan``), :func:`pin` turns each into a pinned
reference, once, on the machine that drives the build:

- a hub id becomes ``owner/name@<commit>``: the commit its revision points to on the hub
  (``HF_ENDPOINT``), or in the local hub cache when offline (the plan says so). A stage that recorded
  a commit keeps it when resumed, even if the hub's branch moved since (the log and the plan name both
  commits; ``--rebuild STAGE`` moves the stage to the new one). Every worker then loads that commit
  (:func:`pretrained`), so the first build on an empty cache, a rerun and another machine have the
  same identities and keys;
- a URL is downloaded once into the model cache (resumed where a download stopped, bounded, verified
  against its checksum) and becomes ``<url>#sha256=<hex>``: its identity is its content, and a worker
  that downloads it again verifies that digest (:func:`local_model`).

A reference that cannot be resolved (no network and not cached, a wrong checksum, a truncated download)
is a :class:`ModelUnavailable`: one line saying what was looked for, where, and what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ieiw.storage.identity import cache_root

COMMIT = re.compile(r"^[0-9a-f]{40}$")
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
MAX_DOWNLOAD_BYTES = 1 << 34  # 16 GiB: no single checkpoint file we load is larger
CHUNK = 1 << 20


class ModelUnavailable(RuntimeError):
    """A model could not be found, fetched or verified; the message says where and what to do."""


@dataclass(frozen=True)
class Reference:
    """A parsed model reference: ``kind`` is ``local``, ``hub``, ``url`` or ``name`` (an open_clip tag,
    a served model's name)."""

    kind: str
    value: str  # the path, the repo id, the URL without its fragment, or the name
    revision: str | None = None  # hub: the branch, tag or commit; url: "sha256:<hex>" or "md5:<hex>"

    @property
    def pinned(self) -> bool:
        if self.kind == "hub":
            return bool(self.revision and COMMIT.match(self.revision))
        if self.kind == "url":
            return bool(self.revision and self.revision.startswith("sha256:"))
        return True

    def text(self) -> str:
        if self.kind == "hub" and self.revision:
            return f"{self.value}@{self.revision}"
        if self.kind == "url" and self.revision:
            algorithm, _, digest = self.revision.partition(":")
            return f"{self.value}#{algorithm}={digest}"
        return self.value


def parse(text: str | os.PathLike) -> Reference:
    value = os.fspath(text)
    if value.startswith(("http://", "https://")):
        url, _, fragment = value.partition("#")
        checksum = None
        for part in filter(None, fragment.split("&")):
            algorithm, _, digest = part.partition("=")
            if algorithm in ("sha256", "md5") and digest:
                checksum = f"{algorithm}:{digest.lower()}"
        return Reference("url", url, checksum)
    if os.path.exists(value) or value.startswith(("/", "./", "../", "~")):
        return Reference("local", value)
    name, _, revision = value.partition("@")
    if HUB_ID.match(name):
        return Reference("hub", name, revision or None)
    return Reference("name", value)


def identity(text: str | os.PathLike | None) -> str | None:
    """What a model is, by content: a local file's SHA-256, a local folder's tree digest (a diffusers
    pipeline folder's over its weights and configs only: :func:`pipeline_files`), a hub id at its commit
    (``hf:<id>@<commit>``), a pinned URL's SHA-256; anything else by its name."""
    from ieiw.storage.identity import file_digest, folder_digest

    if text is None:
        return None
    ref = parse(text)
    if ref.kind == "local":
        path = os.path.expanduser(ref.value)
        if os.path.isfile(path):
            return f"sha256:{file_digest(path)}"
        if os.path.isdir(path):
            files = pipeline_files(path)
            if files is None:
                return f"sha256-tree:{folder_digest(path)}"
            digest = hashlib.sha256()
            for file in files:
                digest.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
            return f"sha256-tree:{digest.hexdigest()}"
        return ref.value
    if ref.kind == "hub":
        commit = ref.revision if ref.pinned else cached_commit(ref.value, ref.revision or "main")
        return f"hf:{ref.value}@{commit or ref.revision or 'main'}"
    if ref.kind == "url":
        if ref.revision and ref.revision.startswith("sha256:"):
            return ref.revision
        cached = _cached_download(ref)
        return f"sha256:{_sha256(cached)}" if cached else ref.value
    return ref.value


PIPELINE_INDEX = "model_index.json"


def pipeline_files(folder: str | os.PathLike) -> list[Path] | None:
    """The files that define a diffusers pipeline folder: ``model_index.json`` and every file of each
    component it names (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``...),
    hidden ones left out; None when ``folder`` is not a pipeline folder. Whatever else lies there
    (``logs/``, ``checkpoints/``, loss curves, mix reports) is not the model: a trained model's identity
    survives a second ``ieiw train`` that changed no weight. A folder holding only the pipeline has the
    same identity by this rule as by a whole-folder digest."""
    import json

    root = Path(folder)
    index = root / PIPELINE_INDEX
    if not index.is_file():
        return None
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    components = sorted(
        name
        for name, value in entries.items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None
    )
    files = [index]
    for name in components:
        part = root / name
        if part.is_file():
            files.append(part)
        elif part.is_dir():
            files += sorted(p for p in part.rglob("*") if p.is_file())
    return sorted(f for f in files if not any(x.startswith(".") for x in f.relative_to(root).parts))


# --------------------------------------------------------------------------------------------- the hub


def _hub_cache() -> Path:
    from huggingface_hub.constants import HF_HUB_CACHE

    return Path(HF_HUB_CACHE)


def cached_commit(repo_id: str, revision: str = "main") -> str | None:
    """The commit ``revision`` points to in the local hub cache, if the model was downloaded."""
    if COMMIT.match(revision):
        return revision
    ref = _hub_cache() / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if COMMIT.match(commit) else None


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_commit(repo_id: str, revision: str | None) -> tuple[str, str]:
    """``(commit, where)`` of ``repo_id`` at ``revision`` (default ``main``): asked of the hub, or read
    from the local hub cache when offline or unreachable (``where`` says which)."""
    revision = revision or "main"
    if COMMIT.match(revision):
        return revision, "given"
    if not offline():
        from huggingface_hub import HfApi
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            sha = HfApi().model_info(repo_id, revision=revision).sha
        except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as error:
            raise ModelUnavailable(
                f"model {repo_id}@{revision}: the hub ({_endpoint()}) has no such model or revision "
                f"({type(error).__name__}); check the name, or give a local path"
            ) from None
        except Exception as error:
            if not isinstance(error, (HfHubHTTPError, OSError)) and not _transport_error(error):
                raise
            cached = cached_commit(repo_id, revision)
            if cached:
                return cached, f"the local hub cache (the hub is unreachable: {type(error).__name__})"
            raise ModelUnavailable(
                f"model {repo_id}@{revision}: the hub ({_endpoint()}) is unreachable and the model is not in "
                f"the local hub cache ({_hub_cache()}); download it where there is network "
                f"(`hf download {repo_id}`) or give a local path"
            ) from None
        if sha:
            _remember(repo_id, revision, sha)
            return sha, "the hub"
    cached = cached_commit(repo_id, revision)
    if cached:
        return cached, "the local hub cache (offline)"
    raise ModelUnavailable(
        f"model {repo_id}@{revision}: not in the local hub cache ({_hub_cache()}) and HF_HUB_OFFLINE is set; "
        f"unset it, download the model first (`hf download {repo_id}`), or give a local path"
    )


def _transport_error(error: BaseException) -> bool:
    """A connection, timeout or protocol error of the HTTP client ``huggingface_hub`` uses."""
    return any(c.__module__.split(".")[0].startswith(("httpx", "httpcore")) for c in type(error).__mro__)


def _remember(repo_id: str, revision: str, commit: str) -> None:
    """Write what ``revision`` pointed to into the hub cache's refs, as ``huggingface_hub`` does when it
    downloads a branch: workers load the commit itself, and an offline run later still knows it."""
    ref = _hub_cache() / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.exists() or ref.read_text().strip() != commit:
            ref.write_text(commit)
    except OSError:
        pass  # a read-only cache: pinning still holds, an offline run will say what is missing


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def pretrained(text: str) -> tuple[str, dict[str, Any]]:
    """``(name or path, keyword arguments)`` for a library's ``from_pretrained``: a pinned hub id loads
    exactly its commit (``revision=``), a local folder is itself."""
    ref = parse(text)
    if ref.kind == "hub":
        return ref.value, ({"revision": ref.revision} if ref.revision else {})
    if ref.kind == "local":
        return os.path.expanduser(ref.value), {}
    return ref.value, {}


# ---------------------------------------------------------------------------------------------- URLs


def _download_dir(url: str) -> Path:
    return cache_root() / "models" / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def _target(ref: Reference) -> Path:
    name = os.path.basename(urllib.parse.urlparse(ref.value).path) or "model.bin"
    return _download_dir(ref.value) / name


def _sha256(path: Path) -> str:
    from ieiw.storage.identity import file_digest

    return file_digest(path)


def _verified(path: Path, checksum: str | None) -> bool:
    if checksum is None:
        return True
    algorithm, _, expected = checksum.partition(":")
    if algorithm == "sha256":
        return _sha256(path) == expected
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest() == expected


def _cached_download(ref: Reference) -> Path | None:
    target = _target(ref)
    return target if target.is_file() and _verified(target, ref.revision) else None


def download(text: str, timeout: float = 60.0) -> Path:
    """The local file of a URL model: downloaded once into the model cache, resumed where an earlier
    download stopped, bounded in size, and verified against its checksum. A wrong checksum or a
    truncated download is a :class:`ModelUnavailable` and leaves nothing in the cache's place."""
    import requests

    ref = parse(text)
    if ref.kind != "url":
        raise ValueError(f"{text} is not a URL")
    target = _target(ref)
    if target.is_file():
        if _verified(target, ref.revision):
            return target
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(ref.value, stream=True, timeout=(10, timeout), headers=headers) as response:
            if response.status_code == 416:  # the partial file is already whole
                response.close()
            else:
                response.raise_for_status()
                if have and response.status_code != 206:  # the server ignores ranges: start over
                    have = 0
                expected = response.headers.get("Content-Length")
                total = have + int(expected) if expected is not None else None
                with open(partial, "ab" if have else "wb") as handle:
                    received = have
                    for chunk in response.iter_content(CHUNK):
                        received += len(chunk)
                        if received > MAX_DOWNLOAD_BYTES:
                            raise ModelUnavailable(
                                f"model {ref.value}: larger than {MAX_DOWNLOAD_BYTES} bytes"
                            )
                        handle.write(chunk)
                if total is not None and received < total:
                    raise ModelUnavailable(
                        f"model {ref.value}: the download stopped at {received} of {total} bytes; "
                        "run again to resume it"
                    )
    except requests.RequestException as error:
        raise ModelUnavailable(
            f"model {ref.value}: cannot be downloaded ({type(error).__name__}); check the URL and the "
            f"network, or download it yourself and give its local path"
        ) from None
    if not _verified(partial, ref.revision):
        partial.unlink()
        raise ModelUnavailable(
            f"model {ref.value}: its {ref.revision.split(':')[0]} does not match the config's "
            f"{ref.revision}; nothing was kept. Check the URL and the checksum"
        )
    os.replace(partial, target)
    return target


def local_model(text: str) -> str:
    """A local file or folder for a model named by a path or a URL (downloaded and verified)."""
    ref = parse(text)
    if ref.kind == "url":
        return str(download(text))
    if ref.kind == "local":
        path = os.path.expanduser(ref.value)
        if not os.path.exists(path):
            raise ModelUnavailable(f"model {ref.value}: no such file or folder")
        return path
    raise ModelUnavailable(f"model {text}: a local file or a URL is expected here, not a hub id or a name")


# ------------------------------------------------------------------------------------- served models

OPENAI = "https://api.openai.com/v1"
# What a server's model list says of a model that changes with the weights it serves, never with time
# (vLLM's ``created`` is the time of the request): the weights' name, what they derive from, the context.
SERVED_FIELDS = ("id", "root", "parent", "owned_by", "max_model_len", "version", "revision", "digest")
_SERVED: dict[tuple[str, str], str] = {}


def served_identity(base_url: str | None, model: str, api_key_env: str = "OPENAI_API_KEY") -> str:
    """A model behind an OpenAI-compatible endpoint, by where it is served and what the server says it
    is: ``api:<endpoint>/<model>#<digest of its entry in the server's model list>`` (the list's stable
    fields: :data:`SERVED_FIELDS`). Moving the endpoint, or the server swapping the weights behind a name
    (another quantisation, another root), gives another identity. A server that does not list its
    models (401, 404) is identified by endpoint and name; one that cannot be reached is a
    :class:`ModelUnavailable`. Asked once per process."""
    import requests

    endpoint = (base_url or OPENAI).rstrip("/")
    slot = (endpoint, model)
    if slot in _SERVED:
        return _SERVED[slot]
    key = os.environ.get(api_key_env or "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = requests.get(f"{endpoint}/models", headers=headers, timeout=(5, 20))
    except requests.RequestException as error:
        raise ModelUnavailable(
            f"served model {model}: {endpoint} cannot be reached ({type(error).__name__}); start the server "
            "or fix base_url"
        ) from None
    identity = f"api:{endpoint}/{model}"
    if response.ok:
        try:
            entries = response.json().get("data") or []
        except ValueError:
            entries = []
        entry = next((e for e in entries if isinstance(e, dict) and e.get("id") == model), None)
        if entries and entry is None:
            listed = ", ".join(str(e.get("id")) for e in entries[:5] if isinstance(e, dict))
            raise ModelUnavailable(f"served model {model}: {endpoint} does not serve it (it lists {listed})")
        if entry is not None:
            from ieiw.storage.schema import stable_key

            stable = {k: entry[k] for k in SERVED_FIELDS if k in entry}
            identity += f"#{stable_key(stable)[:16]}"
    _SERVED[slot] = identity
    return identity


# -------------------------------------------------------------------------------------------- pinning


@dataclass(frozen=True)
class Pin:
    """How one model field of a stage was pinned, for the log and the plan."""

    path: str
    reference: str  # as pinned
    note: str = ""  # the hub moved on, offline, downloaded...


def _model_fields(config: BaseModel, prefix: str = "") -> Iterator[tuple[str, BaseModel, str]]:
    """``(dotted path, owner, field name)`` of every model field of a config that names a hub model or a
    URL to pin, at any depth. A field whose config says what its model is itself (a served model's name,
    an index: ``model_ref(identity=...)``) is pinned only where the config's ``pins(field)`` says so."""
    from ieiw.storage.config import Role, _extra, walk_fields

    for path, role, _, (owner, name) in walk_fields(config, prefix):
        if role is not Role.MODEL:
            continue
        if _extra(type(owner), name, "identity"):
            pins = getattr(owner, "pins", None)
            if not (callable(pins) and pins(name)):
                continue
        yield path, owner, name


def pin_config(config: BaseModel, recorded: Iterable[str | None] = ()) -> list[Pin]:
    """Pin every model field of ``config`` in place (see the module docstring). ``recorded`` are the
    model identities a stage recorded (``hf:<id>@<commit>``): a hub id's recorded commit is kept."""
    pins = []
    known = [r for r in recorded if r]
    for path, owner, name in list(_model_fields(config)):
        value = getattr(owner, name)
        if not isinstance(value, str) or not value:
            continue
        pinned, note = pin_reference(value, known)
        if pinned != value:
            object.__setattr__(owner, name, pinned)
        if note or pinned != value:
            pins.append(Pin(path, pinned, note))
    return pins


def pin_reference(text: str, recorded: Iterable[str] = ()) -> tuple[str, str]:
    """``(pinned reference, note)`` of one model reference (unchanged for local paths and names);
    ``recorded``: identities a stage recorded, whose commit of the same hub id is kept."""
    ref = parse(text)
    if ref.kind == "hub" and not ref.pinned:
        kept = next((c for r in recorded if (c := _recorded_commit(r, ref.value))), None)
        if kept is not None:
            try:
                now, _ = hub_commit(ref.value, ref.revision)
            except ModelUnavailable:
                now = kept
            note = (
                f"{ref.value}: the stage keeps the commit it was made with, {kept[:12]}; "
                f"{ref.revision or 'main'} is now {now[:12]} (--rebuild the stage to move to it)"
                if now != kept
                else ""
            )
            return f"{ref.value}@{kept}", note
        commit, where = hub_commit(ref.value, ref.revision)
        note = f"{ref.value}: {ref.revision or 'main'} is {commit[:12]} ({where})"
        return f"{ref.value}@{commit}", note
    if ref.kind == "url" and not ref.pinned:
        path = download(text)
        return Reference("url", ref.value, f"sha256:{_sha256(path)}").text(), f"{ref.value}: downloaded"
    return text, ""


def _recorded_commit(recorded: str | None, repo_id: str) -> str | None:
    prefix = f"hf:{repo_id}@"
    if recorded and recorded.startswith(prefix) and COMMIT.match(recorded[len(prefix) :]):
        return recorded[len(prefix) :]
    return None


def pin_stage(stage: Any, recorded: Iterable[str | None] = ()) -> list[Pin]:
    """Pin the models of every config a stage object holds (its attributes that are config models),
    on copies, so the stage and the workers it travels to load exactly the pinned models."""
    pins: list[Pin] = []
    recorded = list(recorded)
    for name, value in list(vars(stage).items()):
        if isinstance(value, BaseModel) and any(True for _ in _model_fields(value)):
            copy = value.model_copy(deep=True)
            pins += pin_config(copy, recorded)
            setattr(stage, name, copy)
    return pins
