"""The README's snippets run as written, in order, in a copy of the checkout, as a new user would run
them after `make demo`: every ``bash`` and ``python`` block, except those marked
``<!-- not run by tests/test_readme.py: <why> -->`` (a GPU, the network, a team's server)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- not run by tests/test_readme.py:"
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")


def readme_blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """``(line, language, code, why not run)`` of every fenced block of the README, in order."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened or not opened.group("lang"):
            i += 1
            continue
        indent, lang, start = opened.group("indent"), opened.group("lang"), i
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        why = before[len(MARK) :].removesuffix("-->").strip() if before.startswith(MARK) else None
        i += 1
        code = []
        while i < len(lines) and lines[i].strip() != "```":
            code.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        blocks.append((start + 1, lang, "\n".join(code), why))
        i += 1
    return blocks


def test_every_block_not_meant_to_run_says_why():
    for line, lang, _, why in readme_blocks((ROOT / "README.md").read_text()):
        if why is not None:
            assert lang in ("bash", "python", "sh") and why, f"README line {line}: a mark on a {lang} block"


def _checkout_copy(destination: Path) -> None:
    """The tracked files of the working tree (what a fresh clone of this commit holds)."""
    listed = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@pytest.mark.slow
def test_the_readme_snippets_run_as_written(prefect_api, tmp_path):
    runnable = [
        b for b in readme_blocks((ROOT / "README.md").read_text()) if b[1] in ("bash", "python") and not b[3]
    ]
    assert len(runnable) >= 5, "the README lost its walkthrough"
    clone = tmp_path / "clone"
    _checkout_copy(clone)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_API_URL": prefect_api,
        "TQDM_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    for line, lang, code, _ in runnable:
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (
            f"README line {line} ({lang}) failed:\n{code}\n--- stdout\n{done.stdout[-3000:]}\n"
            f"--- stderr\n{done.stderr[-3000:]}"
        )
        assert "initialized randomly" not in done.stderr, f"README line {line}: {done.stderr[-3000:]}"
    _check_the_first_hour(clone)
    _check_the_preference_loop(clone)


def _check_the_first_hour(clone: Path) -> None:
    """What the first hour's commands made: a 10-step model trained on the demo's removal shards with the
    overrides given, an index of 4 edits, and CLIP metrics of 4 edits (the tiny CLIP's weights loaded)."""
    import json

    import yaml

    model = clone / ".ieiw" / "train" / "smoke"
    assert (model / "model_index.json").is_file() and (clone / ".ieiw" / "tiny-sd" / "unet").is_dir()
    assert len((model / "loss.csv").read_text().splitlines()[1:]) == 10
    config = yaml.safe_load((model / "train_config.yaml").read_text())  # what the run was given
    assert config["data"]["resolution"] == 64 and config["train_batch_size"] == 2
    assert config["base_model"] == str(clone / ".ieiw" / "tiny-sd")
    assert config["data"]["sets"][0]["urls"] == [str(clone / ".ieiw" / "demo" / "build" / "removal")]
    edits = clone / ".ieiw" / "edits" / "smoke"
    index = [json.loads(line) for line in (edits / "index.jsonl").read_text().splitlines()]
    assert len(index) == 4 and len(list(edits.glob("*.png"))) == 4 and (edits / "index.html").is_file()
    assert all((edits / row["edit"]).is_file() and "/multitask/" in row["shard"] for row in index)
    summary = json.loads((clone / ".ieiw" / "eval" / "smoke" / "summary.json").read_text())
    assert summary["samples"] == 4 and summary["clip_image"]["count"] == 4
    assert summary["clip_text"] == {"mean": None, "count": 0}
    assert "no caption" in " ".join(summary["notes"]["clip_text"].split())


def _check_the_preference_loop(clone: Path) -> None:
    """What the preference loop made: pairs chosen by the stand-in reward model, a preference stage that
    logged the DPO figures, and the comparison's table and picture."""
    import csv

    card = (clone / ".ieiw" / "review" / "preferences" / "DATA_CARD.md").read_text()
    assert "| reward-model |" in card and "`reward-model:change`" in card, card
    with open(clone / ".ieiw" / "train" / "smoke-preference" / "loss.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {"implicit_accuracy", "reward_margin", "chosen_error"} <= set(rows[0])
    compared = clone / ".ieiw" / "eval" / "preference"
    assert "preference accuracy" in (compared / "comparison.md").read_text()
    assert (compared / "comparison.png").stat().st_size > 0
