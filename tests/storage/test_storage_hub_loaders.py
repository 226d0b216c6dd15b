"""Every loader of a model named by hub id loads the reference as pinned (``<id>@<commit>``), from the
hub (a local server of its API) into an empty cache, in a fresh process, as a first real build does:
the object verifier, the BLIP captioner, Paint-by-Example and the local judge. A loader that passed the
pinned text to ``from_pretrained`` as a repository name would fail here."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from hub_server import HubServer
from test_storage_models import TESTS, run

MAKERS = {
    "verifier": "quality/judge_tiny_models.py:tiny_owlv2",
    "captioner": "replacement/replacement_tiny_models.py:tiny_blip",
    "paint": "replacement/replacement_tiny_models.py:tiny_paint_by_example",
    "judge": "quality/judge_tiny_models.py:tiny_qwen2_vl",
}

LOAD_ALL = """
    import json, sys
    import torch
    sys.path[:0] = sys.argv[1:3]
    from ieiw.storage.models import identity, pin_reference
    from ieiw.quality.verifier import ObjectVerifier, VerifierConfig
    from ieiw.pipelines.replacement.captions import BlipCaptioner, CaptionConfig
    from ieiw.pipelines.replacement.paint_by_example import load_paint_by_example
    from ieiw.quality.judge import JudgeConfig
    from ieiw.quality.judge_backends import TransformersJudge

    loaders = {
        "verifier": lambda ref: ObjectVerifier.from_config(VerifierConfig(model=ref, device="cpu")).model,
        "captioner": lambda ref: BlipCaptioner(CaptionConfig(backend="blip", model=ref, device="cpu")).model,
        "paint": lambda ref: load_paint_by_example(ref, torch.device("cpu"), torch.float32).unet,
        "judge": lambda ref: TransformersJudge.load(
            JudgeConfig(backend="transformers", model=ref, device="cpu", dtype="float32")
        ).model,
    }
    out = {}
    for role, reference in zip(loaders, sys.argv[3:]):
        pinned, _ = pin_reference(reference)
        weights = loaders[role](pinned)
        first = float(next(weights.parameters()).flatten()[0])
        out[role] = {"pinned": pinned, "identity": identity(pinned), "first": first}
    print(json.dumps(out))
"""


def _save(maker: str, folder: Path, seed: int) -> Path:
    module_path, function = maker.split(":")
    sys.path.insert(0, str(TESTS / Path(module_path).parent))
    module = importlib.import_module(Path(module_path).stem)
    saved = getattr(module, function)(folder, seed=seed)
    return Path(saved) if saved is not None else folder


def test_pinned_hub_models_load_at_their_commit_in_a_fresh_cache(tmp_path):
    paths = (str(TESTS / "quality"), str(TESTS / "replacement"))
    roles = list(MAKERS)
    with HubServer() as hub:
        first = {r: hub.commit(f"tiny/{r}", _save(MAKERS[r], tmp_path / r / "v1", seed=0)) for r in roles}
        names = (f"tiny/{r}" for r in roles)
        made = run(LOAD_ALL, hub.endpoint, tmp_path / "machine-a", args=(*paths, *names))  # an empty cache
        for role in roles:
            assert made[role]["pinned"] == f"tiny/{role}@{first[role]}", made
            assert made[role]["identity"] == f"hf:tiny/{role}@{first[role]}", made
        for role in roles:  # the authors push a new commit of every model
            hub.commit(f"tiny/{role}", _save(MAKERS[role], tmp_path / role / "v2", seed=1))
        # a stage made with the first commits loads exactly those, on another machine with an empty cache
        recorded = (f"tiny/{r}@{first[r]}" for r in roles)
        kept = run(LOAD_ALL, hub.endpoint, tmp_path / "machine-b", args=(*paths, *recorded))
        assert {r: (v["pinned"], v["first"]) for r, v in kept.items()} == {
            r: (v["pinned"], v["first"]) for r, v in made.items()
        }
