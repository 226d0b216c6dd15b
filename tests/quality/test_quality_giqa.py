"""KNN-GIQA against a brute-force reference computation, the index builder, its CLI and the bench."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import typer
from scipy.stats import spearmanr
from typer.testing import CliRunner

from ieiw.quality.giqa import KnnGiqa, brute_force_giqa
from ieiw.quality.giqa_index import ReferenceIndexSettings, build_reference_index, load_reference_index

REPO = Path(__file__).resolve().parents[2]


def clustered(rng: np.random.Generator, n: int, dim: int = 32, clusters: int = 20) -> np.ndarray:
    centers = rng.standard_normal((clusters, dim))
    spreads = rng.uniform(0.2, 1.5, clusters)
    labels = rng.integers(0, clusters, n)
    points = centers[labels] + rng.standard_normal((n, dim)) * spreads[labels, None] / np.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_shards(tmp_path_factory):
    """Reference embeddings as .npy shards, one of them float16 as LAION publishes them."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("references")
    references = clustered(rng, 12_000)
    for number, start in enumerate(range(0, len(references), 4000)):
        part = references[start : start + 4000]
        if number == 0:
            part = part.astype(np.float16)
            references[start : start + 4000] = part.astype(np.float32)
        np.save(root / f"img_emb_{number}.npy", part)
    queries = clustered(np.random.default_rng(1), 300)
    return {"dir": str(root), "references": references, "queries": queries}


@pytest.mark.parametrize(("metric", "k"), [("l2", 1), ("l2", 3), ("l1", 1), ("l1", 3)])
def test_exact_index_scores_equal_brute_force(tmp_path, reference_shards, metric, k):
    meta = build_reference_index(
        reference_shards["dir"], str(tmp_path / "index"), ReferenceIndexSettings(metric=metric)
    )
    assert meta.kind == "flat" and meta.ntotal == 12_000 and meta.metric == metric
    scorer = KnnGiqa(load_reference_index(str(tmp_path / "index")), k=k)
    expected = brute_force_giqa(
        reference_shards["queries"], reference_shards["references"], k=k, metric=metric, block=2500
    )
    np.testing.assert_allclose(scorer.score(reference_shards["queries"]), expected, rtol=1e-4)


def test_compressed_index_keeps_the_ranking(tmp_path, reference_shards):
    faiss.omp_set_num_threads(1)  # tiny problem: threads only contend with the other tests' processes
    settings = ReferenceIndexSettings(kind="ivfpq", nlist=32, pq_m=8, train_size=4000)
    meta = build_reference_index(reference_shards["dir"], str(tmp_path / "ivf"), settings)
    assert meta.kind == "ivfpq" and meta.layout == "ondisk" and meta.ntotal == 12_000
    assert (tmp_path / "ivf" / "reference.ivfdata").is_file() and not (tmp_path / "ivf" / "blocks").exists()
    assert meta.bytes_per_vector < 4 * 32  # smaller than the float32 vectors themselves
    scorer = KnnGiqa(load_reference_index(str(tmp_path / "ivf")), k=1, nprobe=8)
    approximate = scorer.score(reference_shards["queries"])
    exact = brute_force_giqa(reference_shards["queries"], reference_shards["references"], k=1)
    rho = spearmanr(approximate, exact).statistic
    print(f"IVF32,PQ8 nprobe 8: Spearman {rho:.4f} with exact scores, {meta.bytes_per_vector} bytes/vector")
    assert rho > 0.9


def test_index_rejects_what_it_cannot_do(tmp_path, reference_shards):
    with pytest.raises(ValueError, match="L1"):
        build_reference_index(
            reference_shards["dir"], str(tmp_path / "x"), ReferenceIndexSettings(kind="ivfpq", metric="l1")
        )
    with pytest.raises(FileNotFoundError):
        build_reference_index(str(tmp_path / "empty"), str(tmp_path / "y"))
    with pytest.raises(FileNotFoundError):
        load_reference_index(str(tmp_path / "missing"))
    build_reference_index(reference_shards["dir"], str(tmp_path / "ok"))
    with pytest.raises(ValueError, match="queries must be"):
        KnnGiqa(load_reference_index(str(tmp_path / "ok"))).score(np.zeros((2, 5), np.float32))


def test_scores_are_sums_of_inverse_distances():
    references = np.array([[0.0, 0.0], [3.0, 4.0], [10.0, 0.0]], np.float32)
    scores = brute_force_giqa(np.array([[0.0, 0.0], [3.0, 0.0]], np.float32), references, k=2, eps=1e-3)
    np.testing.assert_allclose(scores, [1 / 1e-3 + 1 / 5.0, 1 / 3.0 + 1 / 4.0], rtol=1e-6)


def test_build_giqa_index_command_from_embeddings_and_images(tmp_path, reference_shards, embedder_config):
    from PIL import Image
    from quality_helpers import picture

    from ieiw.flows.commands.quality import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    result = runner.invoke(app, ["build-giqa-index", reference_shards["dir"], "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "reference.json").read_text())["ntotal"] == 12_000

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        Image.fromarray(picture(i)).save(photos / f"p{i}.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    config = tmp_path / "build.yaml"
    config.write_text(json.dumps({"quality": {"scoring": {"embedder": embedder_config.model_dump()}}}))
    result = runner.invoke(
        app,
        [
            "build-giqa-index",
            str(photos),
            "--images",
            "--out",
            str(tmp_path / "img"),
            "--config",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "embedded 5 reference images, 1 unreadable" in result.output
    assert load_reference_index(str(tmp_path / "img")).meta.ntotal == 5


def test_bench_quick_runs_and_its_figures_hold():
    """The bench's own figures on its quick sizes: a compressed index far smaller than flat float32 that
    keeps the exact ranking (Spearman), at every nprobe it sweeps. Its timings are printed, not asserted."""
    completed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "giqa.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=170,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    out = completed.stdout
    bytes_per_vector = float(re.search(r"bytes per reference vector: ([\d.]+)", out)[1])
    flat = int(re.search(r"float32 flat: (\d+)", out)[1])
    assert flat == 4 * 64 and bytes_per_vector < flat / 4
    rhos = [float(r) for r in re.findall(r"spearman: ([\d.]+)", out)]
    assert len(rhos) == 3 and min(rhos) > 0.9, out
    assert re.search(r"brute force: [\d.]+ queries/s", out) and len(re.findall(r"ratio: [\d.]+x", out)) == 3
