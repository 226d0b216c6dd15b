"""The quality section of a build config: scoring models, the filter policy, the eval set, final shards.

A YAML build config embeds it under ``quality:`` and is read by the one config loader
(:func:`ieiw.flows.config.load_config`; see :mod:`ieiw.quality.policy` for the policy part)::

    quality:
      scoring:
        embedder: {model: ViT-L-14, pretrained: /models/clip-vit-l-14.safetensors}
        aesthetic_checkpoint: /models/sac+logos+ava1-l14-linearMSE.pth
        giqa: {index_dir: /indexes/laion-ivfpq, k: 1, nprobe: 32}
      policy:
        default: {aesthetic_src_min: 4.5, aesthetic_tgt_min: 4.5, aesthetic_max_diff: 1.0}
      eval_set: [/data/eval/shards]

Where the scores, the caches, the final shards and the report live is the build's layout
(:class:`ieiw.storage.layout.BuildLayout`), not this section's.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ieiw.quality.policy import FilterPolicy
from ieiw.quality.scoring import ScoringConfig
from ieiw.storage.config import input_file, operational
from ieiw.storage.shards import ShardSpec


class QualityConfig(BaseModel):
    """Everything the ``score`` and ``filter`` stages need besides their places in the build."""

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


def default_scores_url(candidates_url: str) -> str:
    """Where the scores of a generator's candidates live: beside them in their build's layout."""
    from ieiw.storage.layout import scores_of

    return scores_of(candidates_url)
