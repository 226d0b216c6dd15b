"""CLIP similarity metrics for editing pairs, as InstructPix2Pix filtered its data and evaluated edits.

All functions take row-aligned ``(N, D)`` embedding arrays (from
:class:`ieiw.quality.embeddings.ClipEmbedder`) and return ``(N,)`` float32. Inputs need not be
normalised; every metric is a cosine.

- :func:`directional_similarity`: cosine between the edit direction in image space
  (target minus source) and in text space (target caption minus source caption).
- :func:`instruction_alignment`: cosine between the image edit direction and the instruction's
  own embedding, the fallback when a pair has no captions.
- :func:`image_similarity`: source-target image cosine (InstructPix2Pix kept pairs above 0.75).
- :func:`text_image_similarity`: image-caption cosine (CLIP score / 100).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-8


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"embeddings are (N, D) arrays, got shape {a.shape}")
    return a


def normalize(a: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero)."""
    a = _rows(a)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), EPS)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two aligned ``(N, D)`` arrays (a zero row gives 0)."""
    a, b = _rows(a), _rows(b)
    if a.shape != b.shape:
        raise ValueError(f"aligned rows expected, got {a.shape} and {b.shape}")
    return np.sum(normalize(a) * normalize(b), axis=1).astype(np.float32)


def image_similarity(source_images: np.ndarray, target_images: np.ndarray) -> np.ndarray:
    return cosine(source_images, target_images)


def text_image_similarity(images: np.ndarray, texts: np.ndarray) -> np.ndarray:
    return cosine(images, texts)


def directional_similarity(
    source_images: np.ndarray,
    target_images: np.ndarray,
    source_texts: np.ndarray,
    target_texts: np.ndarray,
) -> np.ndarray:
    """cos(E_img(target) - E_img(source), E_txt(target caption) - E_txt(source caption))."""
    return cosine(_rows(target_images) - _rows(source_images), _rows(target_texts) - _rows(source_texts))


def instruction_alignment(
    source_images: np.ndarray, target_images: np.ndarray, instructions: np.ndarray
) -> np.ndarray:
    """cos(E_img(target) - E_img(source), E_txt(instruction)): the direction without captions."""
    return cosine(_rows(target_images) - _rows(source_images), instructions)
