"""The object database and FAISS retrieval on synthetic embeddings with known neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from ieiw.pipelines.replacement.database import ObjectDatabase, image_key, part_names, write_part
from ieiw.pipelines.replacement.index import IndexConfig, ObjectIndex, build_index, resolve_kind
from ieiw.pipelines.replacement.retrieval import Match, NoMatch, RetrievalConfig, retrieve

DIM = 64


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def _toward(query: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` similarity to ``query``."""
    noise = rng.normal(size=query.shape)
    noise -= noise.dot(query) * query
    return _unit(cosine * query + np.sqrt(1 - cosine**2) * _unit(noise))


def _row(image_id: str, region_id: str, label: str | None) -> dict:
    return {
        "object_id": f"{image_id}/{region_id}",
        "dataset": "syn",
        "image_id": image_id,
        "region_id": region_id,
        "image_path": f"/data/{image_id}.jpg",
        "license": None,
        "label": label,
        "label_source": "annotation",
        "bbox": [0, 0, 4, 4],
        "area_fraction": 0.1,
        "predicted_iou": 0.9,
        "stability_score": 0.9,
        "height": 8,
        "width": 8,
        "rle_counts": "",
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Per query: itself (same image), a near-duplicate (0.99), a same-class neighbour (0.9), an
    other-class neighbour (0.8), in parts of the database; plus random distractors."""
    rng = np.random.default_rng(0)
    db_url = str(tmp_path_factory.mktemp("objects"))
    queries = _unit(rng.normal(size=(30, DIM)))
    vectors, rows = [], []
    for q, query in enumerate(queries):
        for region, (cosine, image, label) in enumerate(
            [
                (1.0, f"q{q}", "cat"),
                (0.99, f"dup{q}", "cat"),
                (0.9, f"same{q}", "cat"),
                (0.8, f"other{q}", "dog"),
            ]
        ):
            vectors.append(query if cosine == 1.0 else _toward(query, cosine, rng))
            rows.append(_row(image, str(region), label))
    distractors = _unit(rng.normal(size=(600, DIM)))
    vectors.extend(distractors)
    rows.extend(_row(f"d{i}", "0", None) for i in range(len(distractors)))
    vectors = np.stack(vectors)
    for number, start in enumerate(range(0, len(rows), 250)):
        write_part(db_url, f"part-{number:02d}", vectors[start : start + 250], rows[start : start + 250])
    return db_url, queries, rows


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_replacement_retrieval_returns_the_known_neighbour(synthetic, kind):
    db_url, queries, rows = synthetic
    config = IndexConfig(kind=kind, nlist=4, nprobe=4, hnsw_m=16, ef_search=128)
    index = build_index(ObjectDatabase(db_url), config)
    assert index.kind == kind and len(index) == len(rows)
    keys = [image_key("syn", f"q{q}") for q in range(len(queries))]
    matches = retrieve(index, queries, keys, ["cat"] * len(queries), RetrievalConfig(similarity_ceiling=0.95))
    assert all(isinstance(m, Match) for m in matches)
    for q, match in enumerate(matches):
        assert rows[match.row]["image_id"] == f"same{q}"  # never its own image, never the near-duplicate
        assert match.similarity == pytest.approx(0.9, abs=1e-4) and match.similarity < 0.95
    other = retrieve(
        index,
        queries,
        keys,
        ["cat"] * len(queries),
        RetrievalConfig(similarity_ceiling=0.95, different_label=True),
    )
    assert [rows[m.row]["image_id"] for m in other] == [f"other{q}" for q in range(len(queries))]


def test_replacement_retrieval_says_why_nothing_qualified(synthetic):
    db_url, queries, _ = synthetic
    index = build_index(ObjectDatabase(db_url), IndexConfig(kind="flat"))
    strict = RetrievalConfig(k=3, similarity_ceiling=0.95, min_similarity=0.95)
    result = retrieve(index, queries[:1], [image_key("syn", "q0")], ["cat"], strict)[0]
    assert isinstance(result, NoMatch)
    assert result.skipped == {"same_image": 1, "near_duplicate": 1, "below_min_similarity": 1}
    assert "near_duplicate: 1" in result.detail


def test_replacement_index_saves_and_loads_memory_mapped(synthetic, tmp_path):
    db_url, queries, rows = synthetic
    database = ObjectDatabase(db_url)
    assert part_names(db_url) == ["part-00", "part-01", "part-02"] and len(database) == len(rows)
    assert database.row(251)["object_id"] == rows[251]["object_id"]
    np.testing.assert_allclose(database.vector(0), queries[0], atol=1e-6)
    built = build_index(database, IndexConfig(kind="ivf", nlist=4, nprobe=4))
    built.save(str(tmp_path / "index"))
    loaded = ObjectIndex.load(str(tmp_path / "index"), IndexConfig(nprobe=4))
    assert (
        loaded.kind == "ivf" and loaded.labels == ["cat", "dog"] and loaded.signature == database.signature()
    )
    for a, b in zip(built.search(queries, 5), loaded.search(queries, 5)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(loaded.label_ids[:4], [0, 0, 0, 1])
    assert loaded.image_keys[2] == image_key("syn", "same0")


def test_replacement_index_kind_auto_and_empty_database(tmp_path):
    assert resolve_kind(IndexConfig(), 10) == "flat" and resolve_kind(IndexConfig(), 10**6) == "ivf"
    with pytest.raises(ValueError, match="empty"):
        build_index(ObjectDatabase(str(tmp_path)), IndexConfig())
    with pytest.raises(FileNotFoundError, match="object_database"):
        ObjectIndex.load(str(tmp_path))
