"""CLIP similarity metrics and duplicate detection on constructed data."""

from __future__ import annotations

import numpy as np
import pytest
from quality_helpers import picture

from ieiw.quality.duplicates import (
    DuplicateSettings,
    EvalSet,
    PairFingerprints,
    find_duplicates,
    hamming,
    phash,
)
from ieiw.quality.similarity import (
    cosine,
    directional_similarity,
    image_similarity,
    instruction_alignment,
    normalize,
)


def test_directional_similarity_follows_the_edit_direction():
    src_img = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    tgt_img = np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]])
    src_txt = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    tgt_txt = np.array([[0.0, 2.0, 1.0], [0.0, 2.0, 1.0]])
    np.testing.assert_allclose(
        directional_similarity(src_img, tgt_img, src_txt, tgt_txt), [1.0, -1.0], atol=1e-6
    )
    np.testing.assert_allclose(
        instruction_alignment(src_img, tgt_img, np.array([[0, 1, 0], [0, 1, 0]])), [1.0, -1.0], atol=1e-6
    )
    np.testing.assert_allclose(image_similarity(src_img, tgt_img), [np.sqrt(0.5)] * 2, atol=1e-6)
    assert cosine(np.zeros((1, 3)), np.ones((1, 3)))[0] == 0.0
    np.testing.assert_allclose(np.linalg.norm(normalize(np.array([[3.0, 4.0]])), axis=1), 1.0)
    with pytest.raises(ValueError):
        cosine(np.ones((2, 3)), np.ones((3, 3)))


def test_perceptual_hash_survives_re_encoding_and_resizing():
    image = picture(1, 96)
    resized = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(image).resize((80, 80)))
    assert hamming(phash(image), phash(resized)) <= 4
    assert hamming(phash(image), phash(picture(2, 96))) > 10


def fingerprints(
    pairs: list[tuple[int, int]], embeddings: dict[int, np.ndarray] | None = None
) -> PairFingerprints:
    hashes = {seed: phash(picture(seed)) for pair in pairs for seed in pair}
    keys = [f"k{i:02d}" for i in range(len(pairs))]
    src_emb = tgt_emb = None
    if embeddings is not None:
        src_emb = np.stack([embeddings[s] for s, _ in pairs])
        tgt_emb = np.stack([embeddings[t] for _, t in pairs])
    return PairFingerprints(
        keys,
        np.array([hashes[s] for s, _ in pairs], np.uint64),
        np.array([hashes[t] for _, t in pairs], np.uint64),
        src_emb,
        tgt_emb,
    )


@pytest.mark.parametrize("batch", [1, 2, 1024])
def test_duplicate_pairs_need_both_images_to_match(batch):
    pairs = [(1, 2), (1, 2), (1, 3), (4, 2), (5, 6), (5, 6)]
    found = find_duplicates(fingerprints(pairs), DuplicateSettings(clip_min_cosine=None), batch=batch)
    assert found == {"k01": "phash:k00", "k05": "phash:k04"}


def test_clip_near_duplicates():
    rng = np.random.default_rng(0)
    base = {seed: normalize(rng.standard_normal(16))[0] for seed in range(10)}
    pairs = [(1, 2), (3, 4), (5, 6)]
    pf = fingerprints(pairs, base)
    pf.src_emb[2], pf.tgt_emb[2] = base[1] + 0.01, base[2] - 0.01  # pair 2 looks like pair 0 to CLIP
    settings = DuplicateSettings(phash_max_hamming=None, clip_min_cosine=0.99)
    assert find_duplicates(pf, settings) == {"k02": "clip:k00"}
    assert find_duplicates(pf, DuplicateSettings(phash_max_hamming=None, clip_min_cosine=None)) == {}


def test_eval_set_leaks_are_found_by_hash_and_by_embedding():
    rng = np.random.default_rng(0)
    eval_vectors = normalize(rng.standard_normal((2, 16)))
    eval_set = EvalSet([phash(picture(1)), phash(picture(2))], eval_vectors, ["eval-a", "eval-b"])
    hashes = [phash(picture(1)), phash(picture(3)), phash(picture(4))]
    vectors = normalize(np.stack([rng.standard_normal(16), rng.standard_normal(16), eval_vectors[1] + 0.01]))
    leaks = eval_set.leaks(hashes, vectors, DuplicateSettings())
    assert leaks == ["phash:eval-a", None, "clip:eval-b"]
    assert eval_set.leaks(hashes, None, DuplicateSettings(eval_phash_max_hamming=None)) == [None, None, None]
