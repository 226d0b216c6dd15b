"""The models a command of the model layer is given, checked and pinned before anything loads.

``ieiw train``, ``edit``, ``evaluate``, ``edit-ui`` and ``candidates`` name a diffusers pipeline by a local
folder or a hub id (``owner/name``, ``owner/name@revision``), and ``evaluate`` a CLIP by an open_clip
architecture and a release tag or a checkpoint file. :func:`pipeline_reference` and
:func:`check_clip` look each up first, so a model that is not there is one line
(:class:`~ieiw.storage.models.ModelUnavailable`: what was looked for, where, what to do) instead of a
library's traceback after the slow imports. A hub id comes back pinned to its commit
(``owner/name@<commit>``, :func:`ieiw.storage.models.pin_reference`), and the loaders load exactly that
commit (:func:`ieiw.storage.models.pretrained`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ieiw.storage.models import ModelUnavailable, parse, pin_reference

PIPELINE_INDEX = "model_index.json"
OFFLINE_HINT = "`ieiw tiny-model DIR` writes a tiny one offline for a smoke run"


def pipeline_reference(text: str, what: str = "model", hint: str = "") -> str:
    """``text`` checked as a diffusers pipeline: a local folder holding ``model_index.json`` (returned
    as given), or a hub id, returned pinned to its commit. Raises :class:`ModelUnavailable` in one line:
    a missing folder, a folder that is no pipeline, an unknown hub id, an unreachable hub without the
    model in the local cache. ``what`` names the model in the message (``--model``, ``base_model``);
    ``hint`` is added to it (what else the user can do)."""
    ref = parse(text)
    extra = f"; {hint}" if hint else ""
    if ref.kind == "local":
        folder = Path(os.path.expanduser(ref.value))
        if not folder.exists():
            raise ModelUnavailable(
                f"{what} {text}: no such folder ({folder.absolute()}); give the folder `ieiw train` "
                f"wrote (its output_dir) or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5"
                f"{extra}"
            )
        if not (folder / PIPELINE_INDEX).is_file():
            inside = sorted(p.parent.name for p in folder.glob(f"*/{PIPELINE_INDEX}"))
            where = (
                f"; pipeline folders in it: {', '.join(inside)} (give one of them)"
                if inside
                else "; give the folder `ieiw train` wrote (its output_dir)"
            )
            raise ModelUnavailable(
                f"{what} {text}: not a diffusers pipeline folder (no {PIPELINE_INDEX}){where}{extra}"
            )
        return text
    if ref.kind != "hub":
        raise ModelUnavailable(
            f"{what} {text}: a local diffusers folder or a hub id (owner/name) is expected here{extra}"
        )
    try:
        pinned, _ = pin_reference(text)
    except ModelUnavailable as error:
        local = Path(os.path.expanduser(ref.value)).absolute()
        # a path written without ./ reads as a hub id: say so where its parent folder is here
        folder = f"no folder {local}, and as a " if local.parent.is_dir() else ""
        hub = str(error).removeprefix("model ")
        raise ModelUnavailable(f"{what}: {folder}hub model {hub}{extra}") from None
    return pinned


def check_clip(model: str, pretrained: str | None, config_file: str | None = None) -> str | None:
    """Check an open_clip CLIP before it loads: the architecture is known (or ``config_file`` defines
    it), a checkpoint file is there, a release tag's weights are on the hub or in its local cache.
    Returns the hub id the tag's weights come from (None for a file, or weights open_clip downloads
    from a URL). Raises :class:`ModelUnavailable` in one line, with how to give a local CLIP."""
    import open_clip

    local = (
        "; or give a local CLIP: --clip-model NAME --clip-pretrained FILE (and --clip-config-file JSON "
        "for an architecture open_clip lacks)"
    )
    if config_file and not os.path.isfile(config_file):
        raise ModelUnavailable(
            f"CLIP architecture file {config_file}: no such file; give open_clip's JSON model config "
            f"of {model} ({model}.json)"
        )
    known = model.replace("/", "-") in open_clip.list_models() or bool(
        config_file and Path(config_file).stem == model
    )
    if not known and not model.startswith(("hf-hub:", "local-dir:")):
        raise ModelUnavailable(
            f"CLIP {model}: not an architecture open_clip knows (open_clip.list_models()), and no "
            f"--clip-config-file named {model}.json defines it{local}"
        )
    if not pretrained or model.startswith(("hf-hub:", "local-dir:")):
        return None  # a random model (asked for), or one that names its own weights
    expanded = os.path.expanduser(pretrained)
    if os.path.isfile(expanded):
        return None
    tags = open_clip.list_pretrained_tags_by_model(model) if not config_file else []
    if pretrained not in tags:
        if os.sep in pretrained or "." in os.path.basename(pretrained) or not tags:
            raise ModelUnavailable(
                f"CLIP weights {pretrained}: no such file ({Path(expanded).absolute()}); give the path of "
                f"{model}'s checkpoint file, or one of its open_clip release tags (such as openai)"
            )
        raise ModelUnavailable(
            f"CLIP weights {pretrained!r} for {model}: neither a file nor one of its open_clip release "
            f"tags ({', '.join(tags)}){local}"
        )
    hub = open_clip.get_pretrained_cfg(model, pretrained).get("hf_hub", "")
    if not hub:
        return None  # open_clip downloads it from its URL into its own cache
    repo_id = "/".join(hub.strip("/").split("/")[:2])
    try:
        pin_reference(repo_id)
    except ModelUnavailable as error:
        raise ModelUnavailable(
            f"CLIP {model} {pretrained!r} (the CLIP metrics' model): its weights are the hub model "
            f"{repo_id}: {str(error).removeprefix('model ')}{local}"
        ) from None
    return repo_id
