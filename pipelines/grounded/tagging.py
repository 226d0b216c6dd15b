"""What to remove from a photo: CLIP zero-shot tags over a vocabulary.

The vocabulary's prompts are embedded once, when the tagger is loaded (once per worker); each batch of
photos is embedded at the embedder's fixed batch shape, and a photo's tags are the ``top_k`` names whose
share of the softmax over the whole vocabulary is at least ``min_probability``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ieiw.pipelines.grounded.config import TaggerConfig
from ieiw.quality.embeddings import ClipEmbedder


@dataclass(frozen=True)
class Tag:
    phrase: str
    probability: float


class ClipTagger:
    """A CLIP embedder and the vocabulary's prompt embeddings."""

    kind = "clip_zero_shot"

    def __init__(self, config: TaggerConfig, embedder: ClipEmbedder) -> None:
        self.config = config
        self.embedder = embedder
        self.names = config.names()
        if not self.names:
            raise ValueError("tagger: the vocabulary is empty")
        self.text = embedder.embed_texts([config.prompt.format(n) for n in self.names])

    def tag(self, images: Sequence[np.ndarray]) -> list[list[Tag]]:
        """Each image's tags, most probable first (ties by vocabulary order)."""
        if not images:
            return []
        logits = self.config.temperature * (self.embedder.embed_images(images) @ self.text.T)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        out = []
        for row in probabilities:
            order = np.argsort(-row, kind="stable")[: self.config.top_k]
            out.append(
                [
                    Tag(self.names[i], round(float(row[i]), 6))
                    for i in order
                    if row[i] >= self.config.min_probability
                ]
            )
        return out


def load_tagger(config: TaggerConfig) -> ClipTagger:
    """The tagger of ``config``, its embedder loaded through :meth:`ClipEmbedder.from_config`."""
    return ClipTagger(config, ClipEmbedder.from_config(config.embedder))
