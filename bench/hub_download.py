"""A first build's model download through a local server of the hub's API, against a plain
``huggingface_hub.snapshot_download`` of the same files, in the same run.

The server (``tests/hub_server.py``, what the first-build tests use) serves one model of a real class: the
grounded first-build test's tiny OWLv2 (``--model owlv2``), or a CLIP text encoder of about 60 MB
(``--model clip-text``) where moving bytes dominates. Each try runs in a fresh process with an empty hub
cache, as a new machine's first build would:

- **ours**: pin the hub id to its commit (``ieiw.storage.models.pin_reference``: one ``model_info``
  call), then load it the way every stage's loader does, ``from_pretrained(id, revision=commit)``;
- **baseline**: ``snapshot_download(id)``, then ``from_pretrained(folder)``.

Tries alternate; prints each one's median seconds and the ratio ours / baseline (goal: about 1, the pin
adds one request).

    python bench/hub_download.py [--model clip-text|owlv2] [--tries 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "quality")]

OURS = """
    import sys
    from transformers import AutoModel
    from ieiw.storage.models import pin_reference, pretrained
    pinned, _ = pin_reference(sys.argv[1])
    name, options = pretrained(pinned)
    AutoModel.from_pretrained(name, **options)
"""

BASELINE = """
    import sys
    from huggingface_hub import snapshot_download
    from transformers import AutoModel
    AutoModel.from_pretrained(snapshot_download(sys.argv[1]))
"""


def save_model(kind: str, folder: Path) -> Path:
    if kind == "owlv2":
        from judge_tiny_models import tiny_owlv2

        return tiny_owlv2(folder)
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=512, intermediate_size=2048, num_hidden_layers=4, num_attention_heads=8
    )
    CLIPTextModel(config).save_pretrained(folder)
    return folder


def timed(script: str, endpoint: str, repo: str, home: Path) -> float:
    """Seconds of one fresh process downloading and loading ``repo`` into the empty cache ``home``."""
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home), "IEIW_CACHE": str(home / "ieiw")}
    env.update(HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0", HF_HUB_DISABLE_PROGRESS_BARS="1")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", textwrap.dedent(script), repo], env=env, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("clip-text", "owlv2"), default="clip-text")
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    from hub_server import HubServer

    with tempfile.TemporaryDirectory() as tmp, HubServer() as hub:
        root = Path(tmp)
        folder = save_model(args.model, root / "model")
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        files = sum(1 for p in folder.rglob("*") if p.is_file())
        repo = f"bench/{args.model}"
        hub.commit(repo, folder)
        times: dict[str, list[float]] = {"ours": [], "baseline": []}
        for attempt in range(args.tries):
            for name, script in (("ours", OURS), ("baseline", BASELINE)):
                times[name].append(timed(script, hub.endpoint, repo, root / f"{name}-{attempt}"))
    ours, baseline = statistics.median(times["ours"]), statistics.median(times["baseline"])
    print(f"model {args.model}: {size / 1e6:.1f} MB in {files} files")
    print(f"{'pin + from_pretrained(revision=commit)':44s} {ours:7.2f} s (median of {args.tries})")
    print(f"{'snapshot_download + from_pretrained(folder)':44s} {baseline:7.2f} s (median of {args.tries})")
    print(f"ratio ours / snapshot_download: {ours / baseline:.2f}x")


if __name__ == "__main__":
    main()
