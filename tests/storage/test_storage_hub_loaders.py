"""Every loader of a model named by hub id loads the reference as pinned (``<id>@<commit>``), from the
hub (a local server of its API) into an empty cache, in a fresh process, as a first real build does:
the object verifier, the BLIP captioner, Paint-by-Example and the local judge. A loader that passed the
pinned text to ``from_pretrained`` as a repository name would fail here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hub_server import HubServer
from test_storage_models import TESTS, run

LOADERS = {
    "verifier": (
        "quality/judge_tiny_models.py:tiny_owlv2",
        """
        from ieiw.quality.verifier import ObjectVerifier, VerifierConfig
        loaded = ObjectVerifier.from_config(VerifierConfig(model=pinned, device="cpu"))
        weights = loaded.model
        """,
    ),
    "captioner": (
        "replacement/replacement_tiny_models.py:tiny_blip",
        """
        from ieiw.pipelines.replacement.captions import BlipCaptioner, CaptionConfig
        weights = BlipCaptioner(CaptionConfig(backend="blip", model=pinned, device="cpu")).model
        """,
    ),
    "paint": (
        "replacement/replacement_tiny_models.py:tiny_paint_by_example",
        """
        import torch
        from ieiw.pipelines.replacement.paint_by_example import load_paint_by_example
        weights = load_paint_by_example(pinned, torch.device("cpu"), torch.float32).unet
        """,
    ),
    "judge": (
        "quality/judge_tiny_models.py:tiny_qwen2_vl",
        """
        from ieiw.quality.judge import JudgeConfig
        from ieiw.quality.judge_backends import TransformersJudge
        config = JudgeConfig(backend="transformers", model=pinned, device="cpu", dtype="float32")
        weights = TransformersJudge.load(config).model
        """,
    ),
}

LOAD = """
    import json, sys
    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    from ieiw.storage.models import identity, pin_reference
    pinned, note = pin_reference(sys.argv[1])
{load}
    first = float(next(weights.parameters()).flatten()[0])
    print(json.dumps({{"pinned": pinned, "identity": identity(pinned), "first": first}}))
"""


def _save(maker: str, folder: Path, seed: int) -> Path:
    import importlib
    import sys

    module_path, function = maker.split(":")
    sys.path.insert(0, str(TESTS / Path(module_path).parent))
    module = importlib.import_module(Path(module_path).stem)
    saved = getattr(module, function)(folder, seed=seed)
    return Path(saved) if saved is not None else folder


@pytest.mark.parametrize("role", sorted(LOADERS))
def test_a_pinned_hub_model_loads_at_its_commit_in_a_fresh_cache(role, tmp_path):
    maker, load = LOADERS[role]
    script = LOAD.format(load="\n".join("    " + line.strip() for line in load.strip().splitlines()))
    paths = (str(TESTS / "quality"), str(TESTS / "replacement"))
    with HubServer() as hub:
        first = hub.commit(f"tiny/{role}", _save(maker, tmp_path / "v1", seed=0))
        made = run(script, hub.endpoint, tmp_path / "machine-a", args=(f"tiny/{role}", *paths))
        assert made["pinned"] == f"tiny/{role}@{first}", made
        assert made["identity"] == f"hf:tiny/{role}@{first}", made
        assert hub.requests, "nothing was asked of the hub"
        pushed = hub.commit(f"tiny/{role}", _save(maker, tmp_path / "v2", seed=1))  # the authors push
        # a stage made with the first commit keeps loading it, on another machine too
        kept = run(script, hub.endpoint, tmp_path / "machine-b", args=(f"tiny/{role}@{first}", *paths))
        assert kept["first"] == made["first"] and kept["pinned"] == made["pinned"], json.dumps(kept)
        moved = run(script, hub.endpoint, tmp_path / "machine-c", args=(f"tiny/{role}", *paths))
        assert moved["pinned"] == f"tiny/{role}@{pushed}", moved
