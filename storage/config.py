"""Config files, and what each of their fields is: one loader and one fingerprint rule for every stage.

Every field of a config model says what it is, with the helpers below (a plain ``Field`` is a
:attr:`Role.SETTING`)::

    class RemovalConfig(BaseModel):
        dilation: int = 15                           # a setting: shapes the output
        batch_size: int = operational(64)            # how fast: left out of the fingerprint
        limit: int | None = limit(None)              # how much input: the input key, not the fingerprint
        annotations: list[str] = input_file(...)     # read as input: must exist, taken by digest
        images: str = input_folder(...)              # a folder of inputs: must exist, left out
        model: str | None = model_ref(None)          # a model: by identity (file hash, hub commit)
        precision: str = precision("auto")           # the arithmetic the workers compute in

:func:`load_config_file` reads a YAML file into such a model: ``${VARS}`` come from the environment, a
relative path is relative to the config file, and an unknown field, a bad value, an unset variable or a
missing input file is a :class:`ConfigError` that names the file and the field in one line.
:func:`config_fingerprint` reads the declarations: settings by value, input files by digest, models by
identity, operational fields and output locations not at all, precisions as the workers report them
(:class:`WorkerEnv`).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_core import PydanticUndefined, to_jsonable_python

from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.identity import file_digest, model_identity

M = TypeVar("M", bound=BaseModel)


class Role(StrEnum):
    """What a config field is, for the fingerprint and for the loader."""

    SETTING = "setting"  # shapes the output: fingerprinted by value
    OPERATIONAL = "operational"  # where or how fast (devices, batch sizes, timeouts): left out
    LIMIT = "limit"  # how much of the input is used: not in the fingerprint, in the stage's input key
    INPUT_FILE = "input_file"  # a file read as input: resolved, must exist, fingerprinted by digest
    INPUT_FOLDER = "input_folder"  # a folder (or shards) of inputs: resolved, must exist, left out
    OUTPUT = "output"  # where something is written or cached: resolved, left out
    MODEL = "model"  # a local checkpoint, a hub id or a URL: fingerprinted by identity
    PRECISION = "precision"  # the arithmetic a model computes in on the workers' device


ROLE_KEY = "ieiw_role"


def _field(default: Any, role: Role, extra: dict | None = None, **kwargs: Any) -> Any:
    schema = {ROLE_KEY: str(role), **(extra or {})}
    if "default_factory" in kwargs:
        return Field(json_schema_extra=schema, **kwargs)
    return Field(default, json_schema_extra=schema, **kwargs)


def operational(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """A field that changes how fast or where a stage runs, never what it writes."""
    return _field(default, Role.OPERATIONAL, **kwargs)


def limit(default: Any = None, **kwargs: Any) -> Any:
    """A bound on how much input a stage takes (a larger one is more input, not other output)."""
    return _field(default, Role.LIMIT, **kwargs)


def input_file(default: Any = PydanticUndefined, identity: str | None = None, **kwargs: Any) -> Any:
    """A file (or a list of files) the stage reads: it must exist; its bytes are in the fingerprint
    (``identity``: the name of a method of the config that gives a value's identity instead)."""
    return _field(default, Role.INPUT_FILE, {"identity": identity} if identity else None, **kwargs)


def input_folder(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """A folder of inputs (images): it must exist; the records' provenance says which were used."""
    return _field(default, Role.INPUT_FOLDER, **kwargs)


def output(default: Any = PydanticUndefined, **kwargs: Any) -> Any:
    """Where something is written or cached: resolved against the config file, never fingerprinted."""
    return _field(default, Role.OUTPUT, **kwargs)


def model_ref(default: Any = PydanticUndefined, identity: str | None = None, **kwargs: Any) -> Any:
    """A model: a local file or folder, a hub id or a URL; fingerprinted by its identity by content
    (``identity``: the name of a method of the config that says what the model is instead, as a served
    judge's endpoint and name, or a reference index's content)."""
    return _field(default, Role.MODEL, {"identity": identity} if identity else None, **kwargs)


def precision(default: Any = "auto", device: str = "device", **kwargs: Any) -> Any:
    """A precision setting, fingerprinted as what it computes in on the workers (``device`` names the
    sibling field that says where the model runs)."""
    return _field(default, Role.PRECISION, {"device_field": device}, **kwargs)


def role_of(model: type[BaseModel], name: str) -> Role:
    extra = model.model_fields[name].json_schema_extra
    return Role(extra.get(ROLE_KEY, Role.SETTING)) if isinstance(extra, dict) else Role.SETTING


def _extra(model: type[BaseModel], name: str, key: str) -> Any:
    extra = model.model_fields[name].json_schema_extra
    return extra.get(key) if isinstance(extra, dict) else None


# ------------------------------------------------------------------------------------------ the workers


@dataclass(frozen=True)
class WorkerEnv:
    """What the processes that run batches compute on, as one of them reports it."""

    accelerator: str = "cpu"  # "cpu", or "cuda <GPU name>"
    bf16: bool = False  # the GPU computes bfloat16 natively

    @classmethod
    def here(cls) -> WorkerEnv:
        """This process's accelerator (``CUDA_VISIBLE_DEVICES`` pins a worker to its GPU)."""
        try:
            import torch
        except ImportError:
            return cls()
        if not torch.cuda.is_available():
            return cls()
        return cls(f"cuda {torch.cuda.get_device_name(0)}", bool(torch.cuda.is_bf16_supported()))

    def describe(self) -> str:
        return self.accelerator


def effective_precision(precision_setting: str, device: str | None, env: WorkerEnv) -> str:
    """What ``precision_setting`` computes in on a worker of ``env`` with the model on ``device``.

    Every half-precision setting runs fp32 on a CPU; on a GPU ``auto`` picks bf16 where the GPU supports
    it, so the GPU's kind is part of the answer."""
    if precision_setting in ("fp32", "float32", "no"):
        return "fp32"
    on_gpu = env.accelerator.startswith("cuda") and (
        device in (None, "", "auto") or device.startswith("cuda")
    )
    if not on_gpu:
        return "fp32"
    if precision_setting == "auto":
        return "bf16 on cuda" if env.bf16 else "fp16 on cuda"
    return f"{precision_setting} on cuda"


# ------------------------------------------------------------------------------------- the fingerprint


def input_identity(value: str) -> str:
    """An input file by content (``sha256:<hex>``); a remote file by its name."""
    if "://" not in value and os.path.isfile(value):
        return f"sha256:{file_digest(value)}"
    return os.path.basename(value.rstrip("/"))


ModelIdentity = Callable[[str], str | None]


def fingerprint_tree(
    config: BaseModel,
    env: WorkerEnv | None = None,
    identity: ModelIdentity = model_identity,
    prefix: str = "",
) -> tuple[dict[str, Any], dict[str, str | None]]:
    """``(settings, models)`` of a config model, read from its fields' roles (see the module docstring),
    plus what its ``fingerprint_extra()`` adds, where it has one (versions its own code decides).

    Models are returned by their dotted path (``inpaint.model``) with their identity, so a changed
    checkpoint is named as such; ``env`` (default: this process) decides what a precision computes in.
    """
    env = env or WorkerEnv.here()
    settings: dict[str, Any] = {}
    models: dict[str, str | None] = {}
    cls = type(config)
    for name in cls.model_fields:
        value = getattr(config, name)
        path = f"{prefix}.{name}" if prefix else name
        role = role_of(cls, name)
        if role in (Role.OPERATIONAL, Role.LIMIT, Role.OUTPUT, Role.INPUT_FOLDER):
            continue
        own = _extra(cls, name, "identity")
        if role is Role.MODEL:
            of = getattr(config, own) if own else identity
            if isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    models[f"{path}[{i}]"] = of(str(item)) if item else None
            else:
                models[path] = of(str(value)) if value else None
            continue
        if role is Role.INPUT_FILE:
            of = getattr(config, own) if own else input_identity
            if isinstance(value, (list, tuple)):
                settings[name] = [of(str(v)) for v in value]
            else:
                settings[name] = of(str(value)) if value else None
            continue
        if role is Role.PRECISION:
            device = getattr(config, _extra(cls, name, "device_field") or "device", None)
            settings[name] = effective_precision(str(value), device, env)
            continue
        settings[name], nested = _setting(value, env, identity, path)
        models.update(nested)
    extra = getattr(config, "fingerprint_extra", None)
    if callable(extra):  # settings the config's own code decides (a rubric's version)
        settings.update(to_jsonable_python(extra()))
    return settings, models


def _setting(
    value: Any, env: WorkerEnv, identity: ModelIdentity, path: str
) -> tuple[Any, dict[str, str | None]]:
    if isinstance(value, BaseModel):
        return fingerprint_tree(value, env, identity, path)
    if isinstance(value, (list, tuple)) and any(isinstance(v, BaseModel) for v in value):
        models: dict[str, str | None] = {}
        out = []
        for i, item in enumerate(value):
            tree, nested = _setting(item, env, identity, f"{path}[{i}]")
            out.append(tree)
            models.update(nested)
        return out, models
    if isinstance(value, Mapping) and any(isinstance(v, BaseModel) for v in value.values()):
        models = {}
        mapping = {}
        for key, item in value.items():
            mapping[str(key)], nested = _setting(item, env, identity, f"{path}.{key}")
            models.update(nested)
        return mapping, models
    return to_jsonable_python(value), {}


def config_fingerprint(
    stage: str,
    config: BaseModel,
    env: WorkerEnv | None = None,
    upstream: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    identity: ModelIdentity = model_identity,
) -> Fingerprint:
    """The fingerprint of a stage made from ``config``: the one rule every stage's fingerprint follows.

    ``include``/``exclude`` pick top-level fields (a stage that reads part of a section, as the object
    database reads the replacement section's sources and embedder); ``extra`` adds settings the stage's
    code itself decides (a format version); ``upstream`` maps each stage it reads to that stage's digest.
    """
    settings, models = fingerprint_tree(config, env, identity)
    if include is not None:
        wanted = set(include)
        settings = {k: v for k, v in settings.items() if k in wanted}
        models = {k: v for k, v in models.items() if k.split(".", 1)[0].split("[", 1)[0] in wanted}
    dropped = set(exclude)
    settings = {k: v for k, v in settings.items() if k not in dropped}
    models = {k: v for k, v in models.items() if k.split(".", 1)[0].split("[", 1)[0] not in dropped}
    if extra:
        settings = {**settings, **to_jsonable_python(dict(extra))}
    return Fingerprint(stage=stage, settings=settings, models=models, upstream=dict(upstream or {}))


def input_limits(config: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Every :attr:`Role.LIMIT` field of a config, at any depth, by its dotted path: with the input files
    (in the fingerprint) they decide how much input a stage takes."""
    found: dict[str, Any] = {}
    for path, role, value, _ in walk_fields(config, prefix):
        if role is Role.LIMIT:
            found[path] = value
    return found


def walk_fields(config: BaseModel, prefix: str = "") -> Iterator[tuple[str, Role, Any, tuple]]:
    """``(dotted path, role, value, (owner, field name))`` of every field of a config, at any depth."""
    cls = type(config)
    for name in cls.model_fields:
        value = getattr(config, name)
        path = f"{prefix}.{name}" if prefix else name
        yield path, role_of(cls, name), value, (config, name)
        items: list[tuple[str, Any]] = []
        if isinstance(value, BaseModel):
            items = [(path, value)]
        elif isinstance(value, (list, tuple)):
            items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, Mapping):
            items = [(f"{path}.{k}", v) for k, v in value.items()]
        for sub, item in items:
            if isinstance(item, BaseModel):
                yield from walk_fields(item, sub)


def model_references(config: BaseModel) -> dict[str, str]:
    """Where each model of a config was found on this machine (recorded for people, not fingerprinted)."""
    return {
        path: str(value)
        for path, role, value, _ in walk_fields(config)
        if role is Role.MODEL and isinstance(value, (str, os.PathLike))
    }


# ------------------------------------------------------------------------------------------ the loader


class ConfigError(ValueError):
    """A config that cannot be used as written: says where, what and what to do, in one line each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def expand_variables(node: Any, variables: Mapping[str, str], problems: list[str], path: str = "") -> Any:
    """``${NAME}`` and ``$NAME`` in every string replaced from ``variables``, then the environment
    (``${NAME:-default}``: ``default`` where it is set in neither); an unset name is a problem naming the
    field."""
    if isinstance(node, dict):
        return {
            key: expand_variables(value, variables, problems, f"{path}.{key}" if path else str(key))
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [expand_variables(v, variables, problems, f"{path}[{i}]") for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def substitute(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        value = variables.get(name, os.environ.get(name))
        if value is None and match.group(2) is not None:
            return match.group(2)
        if value is None:
            problems.append(
                f"{path or '(top)'}: uses ${{{name}}}, but {name} is not set; "
                f"set it (export {name}=...) or write the value into the file"
            )
            return match.group(0)
        return value

    return _VARIABLE.sub(substitute, node)


def _is_remote(value: str) -> bool:
    return "://" in value


def resolve_path(value: str, base: Path) -> str:
    """``value`` (a path written in a config) as an absolute path or URL: relative to ``base``."""
    value = os.path.expanduser(value)
    if _is_remote(value) or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def resolve_model(value: str, base: Path) -> str:
    """A model reference: a path relative to the config file where one exists there (or it is written
    as a path: ``./``, ``../``, ``~``), else as written (a hub id, an open_clip tag, a URL)."""
    expanded = os.path.expanduser(value)
    if _is_remote(expanded) or os.path.isabs(expanded):
        return expanded
    local = base / expanded
    if local.exists() or expanded.startswith((".", "~")) or value.startswith("~"):
        return str(local.resolve())
    return value


def _resolve(value: Any, resolver: Callable[[str], str]) -> Any:
    if isinstance(value, str) and value:
        return resolver(value)
    if isinstance(value, list):
        return [resolver(v) if isinstance(v, str) and v else v for v in value]
    if isinstance(value, tuple):
        return tuple(resolver(v) if isinstance(v, str) and v else v for v in value)
    return value


def resolve_paths(config: BaseModel, base: Path) -> None:
    """Make every path field of ``config`` (in place) relative to ``base``: input files and folders,
    outputs and local models."""
    for _, role, value, (owner, name) in list(walk_fields(config)):
        if role in (Role.INPUT_FILE, Role.INPUT_FOLDER, Role.OUTPUT):
            object.__setattr__(owner, name, _resolve(value, lambda v: resolve_path(v, base)))
        elif role is Role.MODEL:
            object.__setattr__(owner, name, _resolve(value, lambda v: resolve_model(v, base)))


def missing_inputs(config: BaseModel, prefix: str = "") -> list[str]:
    """One line per input file or folder of ``config`` that is not there, and per local model path
    (written as a path) that is not there."""
    problems = []
    for path, role, value, (owner, name) in walk_fields(config, prefix):
        if role not in (Role.INPUT_FILE, Role.INPUT_FOLDER, Role.MODEL):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if not isinstance(item, str) or not item or _is_remote(item):
                continue
            if role is Role.MODEL:
                if os.path.isabs(item) and not os.path.exists(item):
                    problems.append(f"{path}: no model at {item}; give a local checkpoint or a hub id")
                continue
            if role is Role.INPUT_FOLDER:
                if "{" not in item and not os.path.exists(item):
                    problems.append(f"{path}: no folder {item}")
            elif _extra(type(owner), name, "identity"):  # an input with an identity of its own: any path
                if not os.path.exists(item):
                    problems.append(f"{path}: no file or folder {item}")
            elif not os.path.isfile(item):
                problems.append(f"{path}: no file {item}")
    return problems


def describe_validation(error: ValidationError, model: type[BaseModel], raw: Any) -> list[str]:
    """One line per pydantic error: the field's dotted path, what is wrong, a close name for a typo."""
    lines = []
    for problem in error.errors():
        loc = [str(p) for p in problem["loc"]]
        where = ".".join(loc) if loc else "(top)"
        where = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", where)
        if problem["type"] == "extra_forbidden":
            known = _known_fields(model, raw, problem["loc"][:-1])
            near = difflib.get_close_matches(loc[-1], known, n=1)
            hint = f"did you mean {near[0]}?" if near else f"known fields: {', '.join(known)}"
            lines.append(f"{where}: unknown field ({hint})")
        elif problem["type"] == "missing":
            lines.append(f"{where}: required, not given")
        else:
            lines.append(f"{where}: {problem['msg']} (got {_short(problem.get('input'))})")
    return lines


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _known_fields(model: type[BaseModel], raw: Any, loc: tuple) -> list[str]:
    """The field names of the model at ``loc`` (following nested models, lists and tagged unions)."""
    current: Any = model
    node = raw
    for part in loc:
        node = node[part] if isinstance(node, (dict, list)) and _has(node, part) else None
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields and part in fields:
            current = _model_in(fields[part].annotation, node)
    fields = getattr(current, "model_fields", None)
    return sorted(fields) if fields else []


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _model_in(annotation: Any, node: Any) -> Any:
    """The BaseModel class inside an annotation (``X | None``, ``list[X]``, a union picked by ``kind``)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    candidates = [a for a in typing.get_args(annotation) if a is not type(None)]
    models = []
    for candidate in candidates:
        found = _model_in(candidate, node)
        if found is not None:
            models.append(found)
    if len(models) > 1 and isinstance(node, dict) and "kind" in node:
        for found in models:
            field = found.model_fields.get("kind")
            if field is not None and node["kind"] in typing.get_args(field.annotation):
                return found
    return models[0] if models else None


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["no such file"]) from None
    except IsADirectoryError:
        raise ConfigError(str(path), ["a folder, not a config file"]) from None
    except OSError as error:
        raise ConfigError(str(path), [f"cannot be read ({error.strerror or error})"]) from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(
            str(path), [f"{where}not valid YAML ({getattr(error, 'problem', error)})"]
        ) from None


def parse_config(
    raw: Any,
    model: type[M],
    source: str,
    base: Path,
    variables: Mapping[str, str] | None = None,
    check_inputs: bool = True,
) -> M:
    """A raw (YAML) tree as ``model``: variables expanded, validated, paths made relative to ``base``,
    input files checked; every problem at once, in a :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"a config is a YAML mapping of fields, not a {type(raw).__name__}"])
    problems: list[str] = []
    raw = expand_variables(raw, variables or {}, problems)
    if problems:
        raise ConfigError(source, problems)
    try:
        config = model.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(source, describe_validation(error, model, raw)) from None
    resolve_paths(config, base)
    if check_inputs:
        problems = missing_inputs(config)
        if problems:
            raise ConfigError(source, problems)
    return config


def load_config_file(
    path: str | os.PathLike,
    model: type[M],
    variables: Mapping[str, str] | None = None,
    check_inputs: bool = True,
) -> M:
    """Read a YAML config file as ``model`` (see :func:`parse_config`); relative paths in it are
    relative to the file's folder."""
    path = Path(path)
    return parse_config(
        read_yaml(path), model, str(path), path.resolve().parent, variables, check_inputs=check_inputs
    )
