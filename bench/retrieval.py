"""FAISS retrieval over the object database: query throughput and recall@1 against exact search.

200k synthetic 768-d unit embeddings (clustered, like CLIP features of objects) are written as
database parts, indexed exact (flat, the baseline), IVF and HNSW through the production code, and
queried with held-out vectors. Prints queries per second, the ratio to exact search, and recall@1
(the share of queries whose top hit is exact search's top hit)::

    python bench/retrieval.py [--count 200000] [--dim 768] [--queries 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import faiss
import numpy as np

from ieiw.pipelines.replacement.database import ObjectDatabase, write_part
from ieiw.pipelines.replacement.index import IndexConfig, build_index


def synthetic(count: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((count, dim), np.float32)
    for start in range(0, count, 50_000):
        n = min(50_000, count - start)
        chunk = centres[rng.integers(0, clusters, n)] + 0.9 * rng.normal(size=(n, dim)).astype(np.float32)
        out[start : start + n] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return out


def write_database(url: str, vectors: np.ndarray, part_rows: int = 50_000) -> None:
    for number, start in enumerate(range(0, len(vectors), part_rows)):
        chunk = vectors[start : start + part_rows]
        rows = [
            {
                "object_id": str(start + i),
                "dataset": "bench",
                "image_id": str(start + i),
                "region_id": "0",
                "image_path": "",
                "bbox": [0, 0, 1, 1],
            }
            for i in range(len(chunk))
        ]
        write_part(url, f"part-{number:03d}", chunk, rows)


def timed_search(index, queries: np.ndarray, k: int) -> tuple[float, np.ndarray, float]:
    started = time.perf_counter()
    _, rows = index.search(queries, k)
    seconds = time.perf_counter() - started
    return len(queries) / seconds, rows, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    vectors = synthetic(args.count + args.queries, args.dim, clusters=1000, rng=rng)
    queries, database_vectors = vectors[: args.queries], vectors[args.queries :]
    print(
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {args.count} x {args.dim} "
        f"database, {args.queries} queries, k={args.k}"
    )
    with tempfile.TemporaryDirectory() as url:
        write_database(url, database_vectors)
        database = ObjectDatabase(url)
        configs = {
            "flat (exact, baseline)": IndexConfig(kind="flat", gpu="never"),
            "ivf nlist=1024 nprobe=16": IndexConfig(
                kind="ivf", nlist=1024, nprobe=16, train_size=40_000, gpu="never"
            ),
            "hnsw M=16 efSearch=64": IndexConfig(
                kind="hnsw", hnsw_m=16, ef_construction=32, ef_search=64, gpu="never"
            ),
        }
        baseline_qps = None
        truth = None
        print(f"{'index':28s} {'build s':>8s} {'queries/s':>10s} {'x exact':>8s} {'recall@1':>9s}")
        for name, config in configs.items():
            started = time.perf_counter()
            index = build_index(database, config)
            build_seconds = time.perf_counter() - started
            qps, rows, _ = timed_search(index, queries, args.k)
            if truth is None:
                baseline_qps, truth = qps, rows[:, 0]
            recall = float((rows[:, 0] == truth).mean())
            print(f"{name:28s} {build_seconds:8.1f} {qps:10.0f} {qps / baseline_qps:8.2f} {recall:9.3f}")


if __name__ == "__main__":
    main()
