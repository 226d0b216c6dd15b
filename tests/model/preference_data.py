"""Preference pairs of the synthetic recolouring task, made as a user makes them: candidate shards (for each
source, the edit the instruction asks for and a wrong one), scores of those candidates, and
``export_preferences`` writing them through the commit protocol into a ``preference`` stage folder
(optionally also in the Diffusion-DPO Hugging Face layout)."""

from __future__ import annotations

import numpy as np
from synthetic_edits import COLOURS, make_sample

from ieiw.model.candidate_shards import (
    CandidateHeader,
    CandidateIndex,
    CandidateSet,
    CandidateSetting,
    write_candidate_sets,
)
from ieiw.model.preferences import ScoredCandidates, export_preferences, scored_pairs
from ieiw.storage.shards import ShardSpec

JUDGE = "judge:synthetic#recolour@1"
REWARD_MODEL = "reward-model:synthetic-rm"


def wrong_edit(sample, rng: np.random.Generator) -> np.ndarray:
    """The source with its shape painted in a colour the instruction did not ask for."""
    asked = sample.target[sample.mask > 0][0]
    others = [c for c in COLOURS.values() if not np.array_equal(c, asked)]
    edit = sample.source.copy()
    edit[sample.mask > 0] = others[int(rng.integers(len(others)))]
    return edit


def candidate_sets(count: int, seed: int, size: int = 32) -> list[CandidateSet]:
    """Two candidates per source; which position holds the right edit alternates."""
    rng = np.random.default_rng(seed)
    sets = []
    for i in range(count):
        sample = make_sample(rng, i, size, split="preference")
        right, wrong = sample.target, wrong_edit(sample, rng)
        candidates = [right, wrong] if i % 2 == 0 else [wrong, right]
        settings = [
            CandidateSetting(seed=k, text_guidance=7.5, image_guidance=1.5, steps=10, checkpoint="tiny")
            for k in range(2)
        ]
        header = CandidateHeader(
            key=sample.key, instruction=sample.meta.instruction, source_meta=sample.meta, settings=settings
        )
        sets.append(CandidateSet(header=header, source=sample.source, candidates=candidates))
    return sets


def write_preference_stage(
    candidates_dir: str,
    stage_url: str,
    count: int = 16,
    per_shard: int = 4,
    seed: int = 5,
    hf_dir: str | None = None,
    reward_model_every: int = 0,
) -> dict:
    """Candidates in ``candidates_dir``, their preference pairs in the stage folder ``stage_url``; every
    ``reward_model_every``-th source is scored by a reward model instead of the judge. Returns
    ``{"keys": {chooser: [pair sample keys]}, "summary": StageSummary}``."""
    sets = candidate_sets(count, seed)
    write_candidate_sets(sets, candidates_dir, max_sets=per_shard)
    scored = []
    for i, candidate_set in enumerate(sets):
        right = 0 if i % 2 == 0 else 1
        scorer = REWARD_MODEL if reward_model_every and i % reward_model_every == 0 else JUDGE
        scores = {right: 9.0, 1 - right: 2.0}
        scored.append(ScoredCandidates(candidate_set.header.key, scores, scorer))
    pairs = scored_pairs(scored, margin=1.0)
    summary = export_preferences(
        pairs,
        CandidateIndex.build(candidates_dir),
        stage_url,
        ShardSpec(max_samples=per_shard),
        hf_dir=hf_dir,
    )
    return {"summary": summary}
