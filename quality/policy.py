"""The declarative filter policy: which pairs a build keeps, per task, and the rule that drops the rest.

Embedded in a YAML build config as::

    policy:
      default:
        aesthetic_src_min: 4.5
        aesthetic_tgt_min: 4.5
        aesthetic_max_diff: 1.0
        clip_img_sim_min: 0.6
      tasks:
        enhancement: {aesthetic_src_min: null, aesthetic_max_diff: null}   # degraded inputs by design
        web_edit: {clip_img_sim_min: 0.4}
      duplicates: {phash_max_hamming: 4, clip_min_cosine: 0.97}

The judge's scores (0 to 10, :mod:`ieiw.quality.judge`) and the object verifier's confidences
(:mod:`ieiw.quality.verifier`) are bounded the same way, per task, e.g. OmniEdit's bar and
AnyEdit's checks::

      default: {judge_overall_min: 9}
      tasks:
        remove: {verify_removed_src_min: 0.3, verify_removed_tgt_max: 0.1}   # object_still_present
        add: {verify_added_tgt_min: 0.3, verify_added_src_max: 0.1}
        replace: {verify_added_tgt_min: 0.3, verify_removed_tgt_max: 0.1}

A task's policy is the default with the task's *set* fields on top (``null`` switches a rule off).
A rule whose bound is ``None`` never drops. Rules run in :data:`RULE_ORDER`; the first that fails
names the drop (``aesthetic_src_below_min``, ``giqa_diff_above_max``, ...). A rule whose score is
missing for a sample drops it as ``missing_<score>``. GIQA values depend on the reference set
(they are sums of 1/distance), so pick its bounds from the score histograms of the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ieiw.quality.duplicates import DUPLICATE, EVAL_LEAK, DuplicateSettings


class TaskPolicy(BaseModel):
    """Bounds for one task. ``None`` switches a rule off."""

    model_config = ConfigDict(extra="forbid")

    aesthetic_src_min: float | None = None
    aesthetic_tgt_min: float | None = None
    aesthetic_max_diff: float | None = None
    giqa_src_min: float | None = None
    giqa_tgt_min: float | None = None
    giqa_max_diff: float | None = None
    clip_direction_min: float | None = None
    clip_direction_max: float | None = None
    clip_img_sim_min: float | None = None
    clip_img_sim_max: float | None = None
    verify_removed_src_min: float | None = None
    verify_removed_tgt_max: float | None = None
    verify_added_src_max: float | None = None
    verify_added_tgt_min: float | None = None
    judge_compliance_min: float | None = None
    judge_preservation_min: float | None = None
    judge_realism_min: float | None = None
    judge_overall_min: float | None = None
    drop_duplicates: bool = True
    drop_eval_leaks: bool = True


@dataclass(frozen=True)
class Rule:
    """A named bound on one score: ``kind`` is ``min`` or ``max``."""

    name: str
    field: str
    score: str
    kind: Literal["min", "max"]


RULES: tuple[Rule, ...] = (
    Rule("aesthetic_src_below_min", "aesthetic_src_min", "aesthetic_src", "min"),
    Rule("aesthetic_tgt_below_min", "aesthetic_tgt_min", "aesthetic_tgt", "min"),
    Rule("aesthetic_diff_above_max", "aesthetic_max_diff", "aesthetic_diff", "max"),
    Rule("giqa_src_below_min", "giqa_src_min", "giqa_src", "min"),
    Rule("giqa_tgt_below_min", "giqa_tgt_min", "giqa_tgt", "min"),
    Rule("giqa_diff_above_max", "giqa_max_diff", "giqa_diff", "max"),
    Rule("clip_direction_below_min", "clip_direction_min", "clip_direction", "min"),
    Rule("clip_direction_above_max", "clip_direction_max", "clip_direction", "max"),
    Rule("clip_img_sim_below_min", "clip_img_sim_min", "clip_img_sim", "min"),
    Rule("clip_img_sim_above_max", "clip_img_sim_max", "clip_img_sim", "max"),
    Rule("object_missing_in_source", "verify_removed_src_min", "verify_removed_src", "min"),
    Rule("object_still_present", "verify_removed_tgt_max", "verify_removed_tgt", "max"),
    Rule("object_already_present", "verify_added_src_max", "verify_added_src", "max"),
    Rule("object_missing_in_target", "verify_added_tgt_min", "verify_added_tgt", "min"),
    Rule("judge_compliance_below_min", "judge_compliance_min", "judge_compliance", "min"),
    Rule("judge_preservation_below_min", "judge_preservation_min", "judge_preservation", "min"),
    Rule("judge_realism_below_min", "judge_realism_min", "judge_realism", "min"),
    Rule("judge_overall_below_min", "judge_overall_min", "judge_overall", "min"),
)
RULE_ORDER: tuple[str, ...] = (EVAL_LEAK, DUPLICATE) + tuple(r.name for r in RULES)


def _default_tasks() -> dict[str, TaskPolicy]:
    return {
        # degraded sources are the point of enhancement pairs; only the target must look good
        "enhancement": TaskPolicy(
            aesthetic_src_min=None, aesthetic_max_diff=None, giqa_src_min=None, giqa_max_diff=None
        ),
        # overlays (circles, masks) change the target on purpose
        "keypoint": TaskPolicy(aesthetic_max_diff=None, giqa_max_diff=None),
        "segmentation": TaskPolicy(aesthetic_max_diff=None, giqa_max_diff=None),
    }


class FilterPolicy(BaseModel):
    """The whole policy: defaults, per-task overrides (by task name) and duplicate settings."""

    model_config = ConfigDict(extra="forbid")

    default: TaskPolicy = Field(
        default_factory=lambda: TaskPolicy(
            aesthetic_src_min=4.5, aesthetic_tgt_min=4.5, aesthetic_max_diff=1.0
        )
    )
    tasks: dict[str, TaskPolicy] = Field(default_factory=_default_tasks)
    duplicates: DuplicateSettings = Field(default_factory=DuplicateSettings)

    def for_task(self, task: str) -> TaskPolicy:
        override = self.tasks.get(str(task))
        if override is None:
            return self.default
        merged = self.default.model_dump()
        merged.update(override.model_dump(exclude_unset=True))
        return TaskPolicy.model_validate(merged)

    def required_scores(self) -> set[str]:
        """Every score some task's policy bounds (the scores table must have these columns)."""
        policies = [self.default] + [self.for_task(t) for t in self.tasks]
        return {r.score for p in policies for r in RULES if getattr(p, r.field) is not None}


@dataclass
class Verdict:
    """``reason`` is None when the sample is kept."""

    reason: str | None
    detail: str = ""

    @property
    def kept(self) -> bool:
        return self.reason is None


def evaluate(
    policy: FilterPolicy,
    task: str,
    scores: Mapping[str, float],
    duplicate_of: str | None = None,
    eval_leak: str | None = None,
    unscored: Mapping[str, tuple[str, str]] | None = None,
) -> Verdict:
    """Apply the task's rules in :data:`RULE_ORDER`; the first that fails names the drop.

    ``unscored`` maps a score that could not be computed for this sample to why (a reason and its
    detail, e.g. ``judge_malformed_answer``): a rule that needs it drops the sample for that reason
    rather than as ``missing_<score>``."""
    rules = policy.for_task(task)
    if eval_leak and rules.drop_eval_leaks:
        return Verdict(EVAL_LEAK, eval_leak)
    if duplicate_of and rules.drop_duplicates:
        return Verdict(DUPLICATE, duplicate_of)
    for rule in RULES:
        bound = getattr(rules, rule.field)
        if bound is None:
            continue
        value = scores.get(rule.score)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if unscored and rule.score in unscored:
                return Verdict(*unscored[rule.score])
            return Verdict(f"missing_{rule.score}", f"{rule.name} needs {rule.score}")
        if (rule.kind == "min" and value < bound) or (rule.kind == "max" and value > bound):
            return Verdict(
                rule.name, f"{rule.score}={value:.4g} {'<' if rule.kind == 'min' else '>'} {bound:.4g}"
            )
    return Verdict(None)
