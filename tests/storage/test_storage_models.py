"""Model references pinned before anything is fingerprinted: hub ids to a commit (through a local server
that speaks the hub's API, as a user's first download would), URLs downloaded once and verified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hub_server import HubServer

TESTS = Path(__file__).resolve().parents[1]


def tiny_text_model(folder: Path, seed: int) -> Path:
    """A tiny CLIP text encoder saved as the hub holds one (config.json + model.safetensors)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=99,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def run(script: str, endpoint: str, home: Path, offline: bool = False, args: tuple[str, ...] = ()) -> dict:
    """Run ``script`` in a fresh process with its own hub cache (the first download of a new machine)."""
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "IEIW_CACHE": str(home / "ieiw"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "TRANSFORMERS_OFFLINE": "1" if offline else "0",
        "PYTHONPATH": str(TESTS),
    }
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


PIN_AND_LOAD = """
    import json, sys
    from transformers import CLIPTextModel
    from ieiw.storage.models import ModelUnavailable, identity, pin_reference, pretrained
    recorded = sys.argv[1:] if len(sys.argv) > 1 else []
    try:
        pinned, note = pin_reference("tiny/clip-text", recorded)
    except ModelUnavailable as error:
        print(json.dumps({"error": str(error)}))
        raise SystemExit(0)
    name, kwargs = pretrained(pinned)
    model = CLIPTextModel.from_pretrained(name, **kwargs)
    print(json.dumps({"pinned": pinned, "note": note, "identity": identity(pinned),
                      "first_weight": float(next(model.parameters()).flatten()[0])}))
"""


PIN_ONLY = """
    import json
    from ieiw.storage.models import pin_reference
    pinned, note = pin_reference("tiny/clip-text")
    print(json.dumps({"pinned": pinned, "note": note}))
"""


def test_hub_ids_are_pinned_to_a_commit_that_every_machine_loads(tmp_path):
    with HubServer() as hub:
        first = hub.commit("tiny/clip-text", tiny_text_model(tmp_path / "v1", seed=1))
        a = run(PIN_AND_LOAD, hub.endpoint, tmp_path / "machine-a")  # an empty cache: the first download
        assert a["pinned"] == f"tiny/clip-text@{first}" and a["identity"] == f"hf:tiny/clip-text@{first}"
        assert "(the hub)" in a["note"]
        other = run(PIN_AND_LOAD, hub.endpoint, tmp_path / "machine-b")  # another machine, empty cache
        assert other["identity"] == a["identity"] and other["first_weight"] == a["first_weight"]

        second = hub.commit("tiny/clip-text", tiny_text_model(tmp_path / "v2", seed=2))  # authors push
        moved = run(PIN_AND_LOAD, hub.endpoint, tmp_path / "machine-a")
        assert moved["pinned"] == f"tiny/clip-text@{second}" and moved["first_weight"] != a["first_weight"]

        # a stage made with the first commit keeps it on resume, and says the branch moved
        kept = run(PIN_AND_LOAD, hub.endpoint, tmp_path / "machine-c", args=(f"hf:tiny/clip-text@{first}",))
        assert kept["pinned"] == f"tiny/clip-text@{first}" and kept["first_weight"] == a["first_weight"]
        assert first[:12] in kept["note"] and second[:12] in kept["note"] and "--rebuild" in kept["note"]

    # offline with the model cached: the cached commit, and the note says so
    cached = run(PIN_AND_LOAD, "http://127.0.0.1:9", tmp_path / "machine-a", offline=True)
    assert cached["pinned"] == f"tiny/clip-text@{second}" and "offline" in cached["note"]
    # the hub unreachable (not offline by setting): pinned to the cached commit too
    unreachable = run(PIN_ONLY, "http://127.0.0.1:9", tmp_path / "machine-a")
    assert unreachable["pinned"] == f"tiny/clip-text@{second}" and "unreachable" in unreachable["note"]
    # neither: one line saying what to do
    nowhere = run(PIN_AND_LOAD, "http://127.0.0.1:9", tmp_path / "machine-d", offline=True)
    assert "\n" not in nowhere["error"] and "hf download tiny/clip-text" in nowhere["error"]


DOWNLOAD = """
    import json, sys
    from ieiw.storage.models import ModelUnavailable, identity, local_model, pin_reference
    try:
        pinned, note = pin_reference(sys.argv[1])
        path = local_model(pinned)  # what a worker does with the pinned reference
    except ModelUnavailable as error:
        print(json.dumps({"error": str(error)}))
        raise SystemExit(0)
    print(json.dumps({"pinned": pinned, "identity": identity(pinned), "path": path}))
"""


def test_url_models_are_downloaded_once_verified_and_named_by_content(tmp_path):
    import hashlib

    folder = tmp_path / "lama"
    folder.mkdir()
    data = os.urandom(3 << 20)
    (folder / "big-lama.pt").write_bytes(data)
    md5, sha = hashlib.md5(data).hexdigest(), hashlib.sha256(data).hexdigest()
    with HubServer() as hub:
        hub.commit("lama/weights", folder)
        url = f"{hub.endpoint}/lama/weights/resolve/main/big-lama.pt"
        script = DOWNLOAD.replace("sys.argv[1]", repr(f"{url}#md5={md5}"))
        good = run(script, hub.endpoint, tmp_path / "home")
        assert good["pinned"] == f"{url}#sha256={sha}" and good["identity"] == f"sha256:{sha}"
        assert Path(good["path"]).read_bytes() == data
        served = hub.requests["GET lama/weights"]
        run(script, hub.endpoint, tmp_path / "home")  # already in the cache: not downloaded again
        assert hub.requests["GET lama/weights"] == served

        wrong = run(
            DOWNLOAD.replace("sys.argv[1]", repr(f"{url}#md5={'0' * 32}")), hub.endpoint, tmp_path / "h2"
        )
        assert "\n" not in wrong["error"] and url in wrong["error"] and "does not match" in wrong["error"]
        assert not any(p.is_file() for p in (tmp_path / "h2" / "ieiw").rglob("*"))  # nothing was kept

        hub.corrupt.add(("lama/weights", "big-lama.pt"))  # the server sends half the file
        cut = run(DOWNLOAD.replace("sys.argv[1]", repr(f"{url}#sha256={sha}")), hub.endpoint, tmp_path / "h3")
        assert "\n" not in cut["error"] and url in cut["error"]
        assert not any(p.name == "big-lama.pt" for p in (tmp_path / "h3" / "ieiw").rglob("*"))


@pytest.mark.parametrize("text,kind", [("owner/name", "hub"), ("owner/name@v1.0", "hub"), ("openai", "name")])
def test_references_parse(text, kind):
    from ieiw.storage.models import parse

    assert parse(text).kind == kind
