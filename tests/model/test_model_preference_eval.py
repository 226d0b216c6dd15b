"""`ieiw evaluate --compare BASE`: did the preference stage help? The starting and the tuned tiny checkpoint
on held-out preference pairs, with the same seeds and guidance: one table, one picture, the judge's scores
(a served judge on 127.0.0.1), and the same numbers again on a rerun."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import typer
import yaml
from chat_server import ChatServer
from judge_server import check_judge_request, images
from PIL import Image
from small_training import small_config
from typer.testing import CliRunner

from ieiw.flows.commands.model import register
from ieiw.model.evaluate_preference import preference_scores
from ieiw.model.trainer import train
from ieiw.quality.judge import JudgeConfig

SEED = 0  # the edits' seed (and the pairs' noise)


def brightness_answer(body: dict) -> str:
    """``overall``: the edit's mean brightness on a 0-10 scale; the other criteria constant."""
    overall = round(np.asarray(images(body)[1].convert("RGB"), dtype=float).mean() / 25.5, 3)
    verdict = {"compliance": 8, "preservation": 8, "realism": 6, "overall": overall}
    return json.dumps({k: {"score": v, "reason": "fixture"} for k, v in verdict.items()})


@pytest.fixture(scope="module")
def tuned(trained_model, preferences, tmp_path_factory):
    """The preference stage run from ``trained_model`` (no EMA: its steps show in the saved weights)."""
    out = tmp_path_factory.mktemp("tuned")
    config = small_config(
        trained_model,
        preferences["stage"],
        out,
        objective="preference",
        max_steps=2,
        use_ema=False,
    )
    return train(config)


def test_preference_scores_from_errors():
    # (pairs, chosen/rejected, timesteps): the tuned model improves the chosen edit of pairs 0 and 2
    base = np.array([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 0.5], [0.7, 0.7]], [[0.2, 0.2], [0.1, 0.1]]])
    tuned = base.copy()
    tuned[0, 0] -= 0.1
    tuned[1, 0] += 0.1
    tuned[2, 1] += 0.2
    scores = preference_scores(base, tuned)
    assert scores["implicit_accuracy"] == pytest.approx(2 / 3)
    assert scores["reward_margin"] == pytest.approx((0.1 - 0.1 + 0.2) / 3)
    assert scores["denoising_preference"] == {"base": 0.5, "tuned": 1.0}  # a tie counts half
    same = preference_scores(base, base)
    assert same["implicit_accuracy"] == 0.5 and same["reward_margin"] == 0


def test_evaluate_compares_the_tuned_model_with_its_start(
    trained_model, tuned, preferences, tiny_clip, tmp_path
):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    name, config_file, weights = tiny_clip
    with ChatServer(default=brightness_answer, check=check_judge_request) as server:
        judge = JudgeConfig(
            model="eval-judge",
            base_url=server.base_url,
            max_in_flight=4,
            backoff_seconds=0.01,
            cache_url=str(tmp_path / "judge-cache"),  # shared by both evaluations
        )
        build = tmp_path / "build.yaml"
        build.write_text(yaml.safe_dump({"quality": {"scoring": {"judge": judge.model_dump(mode="json")}}}))

        def evaluate(out, *extra):
            args = [
                "evaluate",
                "--model",
                tuned,
                "--compare",
                trained_model,
                "--shards",
                preferences["stage"],
            ]
            args += ["-o", out, "--limit", 4, "--steps", 2, "--resolution", 32, "--seed", SEED]
            args += ["--clip-model", name, "--clip-pretrained", weights, "--clip-config-file", config_file]
            args += ["--device", "cpu", "--pair-timesteps", 3, *extra]
            result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            return result

        first = evaluate(tmp_path / "first", "--judge-config", build)
        asked = len(server.requests)
        again = evaluate(tmp_path / "again", "--judge-config", build)
        assert not server.problems
    assert asked == 2 * 4  # each checkpoint's edit of each pair, judged once
    assert (tmp_path / "first" / "comparison.csv").read_text() == (
        tmp_path / "again" / "comparison.csv"
    ).read_text()
    assert len(server.requests) == asked  # the rerun's edits are the same images: the judge's cache answers
    summary = json.loads((tmp_path / "first" / "comparison.json").read_text())
    assert summary == json.loads((tmp_path / "again" / "comparison.json").read_text()), f"seed {SEED}"
    assert summary["pairs"] == summary["preference_pairs"] == 4 and summary["timesteps"] == [250, 500, 750]
    assert summary["models"] == {"base": str(trained_model), "tuned": str(tuned)}
    # a few steps of a tiny random model move its errors by less than the noise does: no claim on the value
    assert 0 <= summary["implicit_accuracy"] <= 1 and summary["reward_margin"] != 0
    metrics = summary["metrics"]
    assert {"clip_direction", "clip_image", "clip_chosen_margin", "judge_overall"} <= set(metrics)
    assert all(set(values) == {"base", "tuned"} for values in metrics.values())
    assert metrics["judge_compliance"] == {"base": 8.0, "tuned": 8.0}
    table = (tmp_path / "first" / "comparison.md").read_text()
    for row in ("preference accuracy", "clip_direction", "clip_image", "judge_overall", "| measure | base |"):
        assert row in table
    assert "preference accuracy" in " ".join(first.output.split()) and "comparison.png" in again.output
    with open(tmp_path / "first" / "comparison.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["checkpoint"] for r in rows) == ["base"] * 4 + ["tuned"] * 4
    assert {r["key"] for r in rows if r["checkpoint"] == "base"} == {
        r["key"] for r in rows if r["checkpoint"] == "tuned"
    }
    with Image.open(tmp_path / "first" / "comparison.png") as picture:
        assert (
            picture.width > 3 * picture.height / 4
        )  # five images a row: source, base, tuned, chosen, rejected


def test_a_judge_config_needs_compare(trained_model, preferences, tmp_path):
    app = typer.Typer()
    register(app)
    build = tmp_path / "build.yaml"
    build.write_text("quality: {}\n")
    args = [
        "evaluate",
        "--model",
        str(trained_model),
        "--shards",
        str(preferences["stage"]),
        "-o",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, [*args, "--judge-config", str(build)])
    assert result.exit_code == 2 and "--compare" in result.output
