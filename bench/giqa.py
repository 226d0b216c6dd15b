"""Benchmark: KNN-GIQA on a compressed FAISS index against brute-force scoring, in one run.

Synthetic clustered reference vectors (unit-length, like CLIP embeddings; clusters of different
spreads, so that GIQA scores vary the way they do between dense and sparse regions of a real
photo collection) are written as ``.npy`` shards and indexed by the production code
(:func:`ieiw.quality.giqa_index.build_reference_index`, IVF-PQ on disk). Queries from the same distribution
are scored by

- brute force, as the GIQA authors' code does: every query against every reference, exact
  distances (here with BLAS matrix products, a stronger baseline than a per-query loop), timed
  on ``--brute-queries`` queries, since all of them would take long;
- the FAISS index (:class:`ieiw.quality.giqa.KnnGiqa`), timed on all ``--queries`` queries, once per
  ``--nprobe`` value (lists searched per query: the speed/recall knob).

Printed: queries per second of each, the ratio, the Spearman correlation of the two scores on the
queries both scored, and bytes per reference vector (index files on disk / N).
Goal: ratio >= 100, Spearman >= 0.95, <= 100 bytes per vector.

    python bench/giqa.py            # 1M x 768-d reference vectors, a few minutes on 2 cores
    python bench/giqa.py --quick    # 20k x 64-d, seconds (the test suite runs this)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ieiw.quality.giqa import KnnGiqa
from ieiw.quality.giqa_index import ReferenceIndexSettings, build_reference_index, load_reference_index


def clustered(n: int, centers: np.ndarray, spreads: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``n`` unit vectors around random centers, each cluster with its own spread."""
    labels = rng.integers(0, len(centers), n)
    noise = rng.standard_normal((n, centers.shape[1]), dtype=np.float32)
    points = centers[labels] + noise * spreads[labels, None] / np.sqrt(centers.shape[1])
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def write_references(directory: Path, n: int, shard: int, centers, spreads, rng) -> list[Path]:
    paths = []
    for number, start in enumerate(range(0, n, shard)):
        path = directory / f"ref-{number:04d}.npy"
        np.save(path, clustered(min(shard, n - start), centers, spreads, rng))
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    centers = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    spreads = np.exp(rng.uniform(np.log(0.3), np.log(1.2), args.clusters)).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp_path = Path(tmp)
        started = time.perf_counter()
        shards = write_references(tmp_path, args.n, args.shard, centers, spreads, rng)
        generated = time.perf_counter() - started
        settings = ReferenceIndexSettings(
            kind="ivfpq", nlist=args.nlist, pq_m=args.pq_m, train_size=args.train_size, seed=args.seed
        )
        started = time.perf_counter()
        meta = build_reference_index([str(p) for p in shards], str(tmp_path / "index"), settings)
        built = time.perf_counter() - started
        queries = clustered(args.queries, centers, spreads, rng)
        brute_queries = queries[: args.brute_queries]
        started = time.perf_counter()
        exact = _brute_over_shards(brute_queries, shards, args.k)
        brute_seconds = time.perf_counter() - started
        reference = load_reference_index(str(tmp_path / "index"))
        sweep = []
        for nprobe in args.nprobe:
            scorer = KnnGiqa(reference, k=args.k, nprobe=nprobe)
            scorer.score(queries[: min(100, len(queries))])  # warm the mapped lists
            started = time.perf_counter()
            fast = scorer.score(queries)
            seconds = time.perf_counter() - started
            rho = float(spearmanr(fast[: len(exact)], exact).statistic)
            sweep.append({"nprobe": nprobe, "qps": len(queries) / seconds, "spearman": rho})
    brute_qps = len(brute_queries) / brute_seconds
    return {
        "references": args.n,
        "dim": args.dim,
        "index": meta.description,
        "k": args.k,
        "generate_s": generated,
        "build_s": built,
        "brute_qps": brute_qps,
        "sweep": sweep,
        "bytes_per_vector": meta.bytes_per_vector,
        "faiss_queries": len(queries),
        "brute_queries": len(brute_queries),
    }


def _brute_over_shards(queries: np.ndarray, shards: list[Path], k: int) -> np.ndarray:
    """Brute force shard by shard (the exact K nearest over all shards), bounded memory."""
    best = np.full((len(queries), k), np.inf)
    q_norms = (queries.astype(np.float64) ** 2).sum(1)[:, None]
    for path in shards:
        refs = np.load(path, mmap_mode="r")
        squared = (
            q_norms
            + (np.asarray(refs, np.float64) ** 2).sum(1)[None, :]
            - 2.0 * (queries @ np.asarray(refs).T)
        )
        dist = np.sqrt(np.maximum(squared, 0.0))
        merged = np.concatenate([best, dist], axis=1)
        best = np.sort(np.partition(merged, k - 1, axis=1)[:, :k], axis=1)
    return (1.0 / np.maximum(best, 1e-6)).sum(1)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--brute-queries", type=int, default=200)
    parser.add_argument("--nlist", type=int, default=2048)
    parser.add_argument("--pq-m", type=int, default=64)
    parser.add_argument(
        "--nprobe",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[2, 4, 8],
        help="IVF lists probed per query, comma-separated (one line each)",
    )
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--shard", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the temporary shards and index go")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.clusters, args.queries, args.brute_queries = 20_000, 64, 100, 1000, 100
        args.nlist, args.pq_m, args.train_size, args.shard = 64, 16, 5_000, 10_000
    return args


def main(argv: list[str] | None = None) -> None:
    result = run(parse(argv))
    print(
        f"references: {result['references']:,} x {result['dim']}-d, index {result['index']}, K={result['k']}"
    )
    print(f"generate {result['generate_s']:.1f} s, build {result['build_s']:.1f} s")
    print(f"bytes per reference vector: {result['bytes_per_vector']:.1f} (float32 flat: {4 * result['dim']})")
    print(f"brute force: {result['brute_qps']:.1f} queries/s ({result['brute_queries']} queries)")
    for row in result["sweep"]:
        print(
            f"faiss nprobe {row['nprobe']}: {row['qps']:.1f} queries/s ({result['faiss_queries']} queries), "
            f"ratio: {row['qps'] / result['brute_qps']:.1f}x faster, spearman: {row['spearman']:.4f}"
        )


if __name__ == "__main__":
    main()
