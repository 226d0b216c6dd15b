"""The filter policy: every rule can drop and can keep; per-task overrides; YAML round trip."""

from __future__ import annotations

import math

import pytest
import yaml

from ieiw.quality.policy import RULE_ORDER, RULES, FilterPolicy, TaskPolicy, evaluate

GOOD = {
    "aesthetic_src": 6.0,
    "aesthetic_tgt": 6.0,
    "aesthetic_diff": 0.0,
    "giqa_src": 5.0,
    "giqa_tgt": 5.0,
    "giqa_diff": 0.0,
    "clip_direction": 0.2,
    "clip_img_sim": 0.8,
    "verify_removed_src": 0.5,
    "verify_removed_tgt": 0.5,
    "verify_added_src": 0.5,
    "verify_added_tgt": 0.5,
    "judge_compliance": 8.0,
    "judge_preservation": 8.0,
    "judge_realism": 8.0,
    "judge_overall": 8.0,
}


def only(field: str, bound: float) -> FilterPolicy:
    return FilterPolicy(default=TaskPolicy(**{field: bound}), tasks={})


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_every_rule_can_keep_and_can_drop(rule):
    value = GOOD[rule.score]
    lenient = value - 1 if rule.kind == "min" else value + 1
    strict = value + 1 if rule.kind == "min" else value - 1
    assert evaluate(only(rule.field, lenient), "remove", GOOD).kept
    verdict = evaluate(only(rule.field, strict), "remove", GOOD)
    assert verdict.reason == rule.name and rule.score in verdict.detail
    missing = {k: v for k, v in GOOD.items() if k != rule.score}
    assert evaluate(only(rule.field, lenient), "remove", missing).reason == f"missing_{rule.score}"
    assert evaluate(only(rule.field, lenient), "remove", {**GOOD, rule.score: math.nan}).reason.startswith(
        "missing_"
    )


@pytest.mark.parametrize(
    ("flag", "switch"), [("duplicate_of", "drop_duplicates"), ("eval_leak", "drop_eval_leaks")]
)
def test_duplicate_and_leak_rules_can_keep_and_can_drop(flag, switch):
    policy = FilterPolicy(default=TaskPolicy(), tasks={})
    reason = {"duplicate_of": "duplicate", "eval_leak": "eval_leak"}[flag]
    assert evaluate(policy, "add", GOOD).kept
    assert evaluate(policy, "add", GOOD, **{flag: "phash:abc"}).reason == reason
    off = FilterPolicy(default=TaskPolicy(**{switch: False}), tasks={})
    assert evaluate(off, "add", GOOD, **{flag: "phash:abc"}).kept


def test_first_failing_rule_in_order_names_the_drop():
    policy = FilterPolicy(default=TaskPolicy(aesthetic_src_min=7, clip_img_sim_min=0.9), tasks={})
    assert evaluate(policy, "remove", GOOD).reason == "aesthetic_src_below_min"
    assert evaluate(policy, "remove", GOOD, eval_leak="clip:x", duplicate_of="phash:y").reason == "eval_leak"
    assert RULE_ORDER[:2] == ("eval_leak", "duplicate")


def test_task_overrides_merge_over_the_default():
    policy = FilterPolicy.model_validate(
        yaml.safe_load("""
default: {aesthetic_src_min: 5.0, aesthetic_tgt_min: 5.0, aesthetic_max_diff: 0.5}
tasks:
  enhancement: {aesthetic_src_min: null, aesthetic_max_diff: null}
  web_edit: {aesthetic_tgt_min: 7.0}
""")
    )
    low_source = {**GOOD, "aesthetic_src": 2.0, "aesthetic_diff": 4.0}
    assert evaluate(policy, "remove", low_source).reason == "aesthetic_src_below_min"
    assert evaluate(policy, "enhancement", low_source).kept
    assert evaluate(policy, "web_edit", GOOD).reason == "aesthetic_tgt_below_min"
    assert policy.for_task("web_edit").aesthetic_src_min == 5.0
    assert policy.required_scores() == {"aesthetic_src", "aesthetic_tgt", "aesthetic_diff"}


def test_policy_rejects_unknown_fields_and_reads_from_a_build_config(tmp_path):
    from ieiw.flows.config import load_config
    from ieiw.storage.config import ConfigError

    with pytest.raises(ValueError):
        FilterPolicy.model_validate({"default": {"aesthetic_minimum": 3}})
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "held-out.png").write_bytes(b"an image held out")
    path = tmp_path / "build.yaml"
    path.write_text(  # a build config whose only section is quality (no output: it builds nothing)
        yaml.safe_dump(
            {
                "name": "b1",
                "quality": {
                    "policy": {"default": {"giqa_src_min": 1.5}},
                    "eval_set": ["eval/held-out.png"],  # relative to the config file
                },
            }
        )
    )
    config = load_config(path).section("quality")
    assert config.policy.default.giqa_src_min == 1.5
    assert config.eval_set == [str(tmp_path / "eval" / "held-out.png")]
    # without a tasks section the built-in task overrides stay: enhancement sources are degraded by design
    assert config.policy.for_task("enhancement").giqa_src_min is None
    assert config.policy.for_task("remove").giqa_src_min == 1.5
    assert FilterPolicy(tasks={}).for_task("enhancement").aesthetic_src_min == 4.5
    # a typo in the policy is one line naming the field and the file
    path.write_text(yaml.safe_dump({"quality": {"policy": {"default": {"giqa_src_mn": 1.5}}}}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}: quality.policy.default.giqa_src_mn: unknown field (did you mean giqa_src_min?)"
    )
