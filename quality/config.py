"""The quality section of a build config: scoring models, the filter policy, the eval set, outputs.

A YAML build config embeds it under ``quality:`` (see :mod:`ieiw.quality.policy` for the policy part)::

    quality:
      scoring:
        embedder: {model: ViT-L-14, pretrained: /models/clip-vit-l-14.safetensors}
        aesthetic_checkpoint: /models/sac+logos+ava1-l14-linearMSE.pth
        giqa: {index_dir: /indexes/laion-ivfpq, k: 1, nprobe: 32}
      policy:
        default: {aesthetic_src_min: 4.5, aesthetic_tgt_min: 4.5, aesthetic_max_diff: 1.0}
      eval_set: [/data/eval/shards]
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ieiw.quality.embeddings import EmbeddingCache
from ieiw.quality.policy import FilterPolicy
from ieiw.quality.scoring import ScoringConfig
from ieiw.storage import fs
from ieiw.storage.config import input_file, operational
from ieiw.storage.shards import ShardSpec

SCORES_DIR = "quality/scores"
EMBEDDINGS_DIR = "embeddings"


class QualityConfig(BaseModel):
    """Everything the ``score`` and ``filter`` flows need besides their input and output URLs."""

    model_config = ConfigDict(extra="forbid")

    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    policy: FilterPolicy = Field(default_factory=FilterPolicy)
    # image or shard directories held out for evaluation, by content
    eval_set: list[str] = input_file(default_factory=list, identity="eval_identity")
    # bounds of the final shards; their images are the candidates' own bytes, so the encoding is theirs
    shard: ShardSpec = Field(default_factory=ShardSpec)
    report_images: int = operational(60)

    def eval_identity(self, url: str) -> str:
        """A held-out set by its content."""
        from ieiw.quality.identities import data_identity

        return data_identity(url)

    @classmethod
    def from_yaml(cls, path: str | Path, section: str = "quality") -> QualityConfig:
        """Read the ``quality`` section of a build config (or a file that is only that section)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a YAML mapping")
        return cls.model_validate(data.get(section, data))


def default_scores_url(candidates_url: str) -> str:
    """Where the scores of a generator's candidates live: beside them in their build's layout."""
    from ieiw.storage.layout import scores_of

    return scores_of(candidates_url)


def cache_root(config: QualityConfig, scores_url: str) -> str:
    """Where embeddings are cached: ``scoring.cache_url`` (shared, never cleaned by a stage), or the
    scores stage's own ``embeddings/`` folder (cleaned by that stage's lease holder)."""
    return config.scoring.cache_url or fs.join(scores_url, EMBEDDINGS_DIR)


def embedding_cache(config: QualityConfig, scores_url: str) -> EmbeddingCache:
    """The embedding cache of the configured embedder, under its identity by content."""
    return EmbeddingCache(cache_root(config, scores_url), config.scoring.embedder.identity())
