"""bench/train_throughput.py in its tiny CPU mode, so the GPU measurement never rots: SD 1.5 and SDXL
against the reference loop, aspect-ratio buckets against the same loop without them, and the preference
stage against the editing stage."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = ["--device", "cpu", "--tiny", "--steps", "2", "--warmup", "1", "--batch-size", "2"]


def test_sdxl_against_the_reference_loop(bench, capsys):
    bench.main([*TINY, "--base", "sdxl", "--resolution", "64"])
    out = capsys.readouterr().out
    assert re.search(r"ratio ours / baseline: \d+\.\d\dx", out)
    assert "ours (fp32, latent cache)" in out and "64 px" in out


def test_buckets_against_square_crops(bench, capsys):
    bench.main([*TINY, "--base", "sdxl", "--resolution", "64", "--buckets", "--bucket-step", "16",
                "--stream-batches", "2"])
    out = capsys.readouterr().out
    assert "buckets (height x width): 80x48, 64x64, 48x80" in out
    assert re.search(r"ratio buckets / square \(stream\): \d+\.\d\dx", out)
    assert re.search(r"ratio buckets / square \(step\): \d+\.\d\dx", out)


def test_the_preference_stage_against_the_editing_stage(bench, capsys):
    bench.main([*TINY, "--resolution", "64", "--stage", "preference", "--repeats", "1"])
    out = capsys.readouterr().out
    assert re.search(r"editing stage \(samples/s\) +\d+\.\d\d images/s", out)
    assert re.search(r"preference stage \(pairs/s\) +\d+\.\d\d images/s", out)
    assert re.search(r"ratio preference / edit \(pairs against samples\): \d+\.\d\dx", out)
