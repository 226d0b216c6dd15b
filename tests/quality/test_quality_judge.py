"""The VLM judge: rubrics, the answer parser, the OpenAI-compatible backend against a local server
(scores, a malformed answer, a 429, a timeout, a refusal), the answer cache, bounded concurrency, and
the local transformers backend with a tiny Qwen2-VL saved and loaded as real checkpoints are."""

from __future__ import annotations

import json

import numpy as np
import pytest
from chat_server import ChatServer
from judge_server import check_judge_request, images, judge_answer, user_text
from judge_tiny_models import tiny_qwen2_vl
from quality_helpers import picture

from ieiw.quality.judge import (
    JUDGE_MALFORMED,
    JUDGE_REFUSED,
    JUDGE_UNAVAILABLE,
    JUDGE_UNREADABLE,
    Judge,
    JudgeConfig,
    JudgeRequest,
)
from ieiw.quality.judge_backends import OpenAIJudge, TransformersJudge
from ieiw.quality.judge_rubrics import CRITERIA, RUBRICS, parse_answer, rubric_for
from ieiw.storage.answer_cache import PromptCache
from ieiw.storage.chat import InvalidAnswer
from ieiw.storage.images import encode_image
from ieiw.storage.schema import Task

VALID = json.dumps({c: {"score": 7, "reason": f"{c} ok"} for c in CRITERIA})


@pytest.fixture
def server():
    with ChatServer(default=judge_answer, check=check_judge_request) as running:
        yield running


def requests(n: int, task: str = "remove", start: int = 0) -> list[JudgeRequest]:
    return [
        JudgeRequest(
            f"pair-{i}",
            task,
            f"remove the thing number {i}",
            encode_image(picture(i)),
            encode_image(picture(100 + i)),
        )
        for i in range(start, start + n)
    ]


def openai_judge(server: ChatServer, tmp_path=None, **overrides) -> tuple[Judge, list[float]]:
    slept: list[float] = []
    config = JudgeConfig(
        model="judge-test",
        base_url=server.base_url,
        api_key_env="IEIW_TEST_JUDGE_KEY",
        timeout=0.5,
        max_attempts=3,
        backoff_seconds=0.01,
        max_in_flight=4,
    ).model_copy(update=overrides)
    cache = PromptCache(str(tmp_path / "judge-cache")) if tmp_path is not None else None
    return Judge(config, OpenAIJudge(config, sleep=slept.append), cache), slept


def test_judge_has_a_versioned_rubric_for_every_task():
    for task in Task:
        rubric = rubric_for(str(task))
        assert rubric.identity() == f"{rubric.name}@{rubric.version}"
        assert rubric.identity(rewrite=True) == f"{rubric.name}@{rubric.version}+instruction"
    assert {rubric_for(t).name for t in ("keypoint", "segmentation", "enhancement")} == {"multitask"}
    assert {"remove", "add", "replace", "web_edit", "multitask"} <= set(RUBRICS)


@pytest.mark.parametrize(
    "answer",
    [
        VALID,
        f"```json\n{VALID}\n```",
        f"Here is my verdict: {VALID} Hope this helps.",
        json.dumps({"instruction_compliance": 7, "preservation": "7", "artifacts": "7/10", "overall": 7.0}),
    ],
)
def test_judge_parser_reads_plain_fenced_and_loose_answers(answer):
    parsed = parse_answer(answer)
    assert parsed.scores == dict.fromkeys(CRITERIA, 7.0)


@pytest.mark.parametrize(
    ("answer", "reason", "rewrite"),
    [
        ("the edit looks fine, 8 out of 10", "not_json", False),
        (json.dumps({c: 7 for c in CRITERIA if c != "overall"}), "missing_overall", False),
        (json.dumps({**{c: 7 for c in CRITERIA}, "realism": 11}), "score_out_of_range", False),
        (json.dumps({**{c: 7 for c in CRITERIA}, "realism": True}), "bad_realism", False),
        (json.dumps({**{c: 7 for c in CRITERIA}, "overall": "great"}), "bad_overall", False),
        (VALID, "bad_instruction", True),
        (
            json.dumps({**{c: 7 for c in CRITERIA}, "instruction": "a\nb " + "word " * 50}),
            "bad_instruction",
            True,
        ),
    ],
)
def test_judge_parser_rejects_what_it_cannot_use(answer, reason, rewrite):
    with pytest.raises(InvalidAnswer) as error:
        parse_answer(answer, rewrite)
    assert error.value.reason == reason


def test_judge_scores_pairs_through_an_openai_compatible_server(server, monkeypatch):
    monkeypatch.setenv("IEIW_TEST_JUDGE_KEY", "sk-judge-1")
    judge, _ = openai_judge(server)
    out = judge.judge(requests(5))
    assert [j.key for j in out] == [f"pair-{i}" for i in range(5)]
    assert all(j.ok for j in out) and server.problems == []
    assert [j.scores["overall"] for j in out] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert out[3].reasons == {
        "compliance": "the edit does what is asked",
        "preservation": "the rest is unchanged",
        "realism": "a faint seam",
        "overall": "pair 3",
    }
    assert (
        out[0].rubric == "remove@1"
        and out[0].model == f"api:{server.base_url}/judge-test"
        and out[0].instruction == ""
    )
    assert judge.requests_sent == 5 and len(server.requests) == 5
    request = server.requests[0]
    assert request["authorization"] == "Bearer sk-judge-1" and request["body"]["model"] == "judge-test"
    assert "remove the thing number" in user_text(request["body"])
    assert [im.size for im in images(request["body"])] == [(48, 48), (48, 48)]


def test_judge_rewrites_the_instruction_when_asked(server):
    judge, _ = openai_judge(server, rewrite_instruction=True)
    out = judge.judge(requests(2, task="replace"))
    assert [j.instruction for j in out] == ["make edit 0", "make edit 1"]
    assert out[0].rubric == "replace@1+instruction"


def test_judge_retries_a_malformed_answer_then_records_a_drop_reason(server):
    server.script.extend([("answer", "Looks good to me!"), ("answer", VALID)])
    judge, slept = openai_judge(server, max_in_flight=1)
    (first,) = judge.judge(requests(1))
    assert first.ok and first.scores["overall"] == 7.0 and judge.requests_sent == 2 and len(slept) == 1
    server.script.extend([("answer", "no"), ("answer", "{}"), ("answer", json.dumps({"overall": 99}))])
    (second,) = judge.judge(requests(1, start=1))
    assert second.error == JUDGE_MALFORMED and second.scores == {}
    assert "invalid:not_json" in second.detail and "invalid:missing_compliance" in second.detail


def test_judge_honours_retry_after_and_survives_a_timeout(server):
    server.script.extend([("429", 2), ("stall", 1.5)])
    judge, slept = openai_judge(server, max_in_flight=1)
    (out,) = judge.judge(requests(1))
    assert out.ok and judge.requests_sent == 3
    assert 2.0 in slept  # the server's Retry-After, not the 10 ms backoff


def test_judge_records_unavailable_and_refused_without_raising(server):
    server.script.extend([("status", 503)] * 3)
    judge, _ = openai_judge(server, max_in_flight=1)
    (down,) = judge.judge(requests(1))
    assert down.error == JUDGE_UNAVAILABLE and judge.requests_sent == 3
    server.script.append(("status", 400))
    (refused,) = judge.judge(requests(1, start=1))
    assert refused.error == JUDGE_REFUSED and "HTTP 400" in refused.detail and judge.requests_sent == 4
    broken = JudgeRequest("broken", "remove", "remove it", b"not an image", encode_image(picture(1)))
    (unreadable,) = judge.judge([broken])
    assert unreadable.error == JUDGE_UNREADABLE and judge.requests_sent == 4


def test_judge_cache_makes_a_rerun_ask_nothing(server, tmp_path):
    first, _ = openai_judge(server, tmp_path)
    server.script.append(("status", 503))  # pair 0's first attempt fails, its retry answers
    answered = first.judge(requests(6))
    assert all(j.ok for j in answered) and first.requests_sent == 7
    second, _ = openai_judge(server, tmp_path)  # a new process: a fresh backend, the same cache
    again = second.judge(requests(6))
    assert second.requests_sent == 0 and all(j.cached for j in again) and second.cache_hits == 6
    assert [j.scores for j in again] == [j.scores for j in answered]
    assert [j.reasons for j in again] == [j.reasons for j in answered]
    other_model, _ = openai_judge(server, tmp_path, model="another-judge")
    assert all(not j.cached for j in other_model.judge(requests(2))) and other_model.requests_sent == 2
    rewritten, _ = openai_judge(server, tmp_path, rewrite_instruction=True)  # another rubric identity
    assert rewritten.judge(requests(1))[0].instruction == "make edit 0" and rewritten.requests_sent == 1


def test_judge_does_not_cache_failures(server, tmp_path):
    server.script.extend([("answer", "nope")] * 3)
    judge, _ = openai_judge(server, tmp_path, max_in_flight=1)
    assert judge.judge(requests(1))[0].error == JUDGE_MALFORMED
    rerun, _ = openai_judge(server, tmp_path)
    assert rerun.judge(requests(1))[0].ok and rerun.requests_sent == 1


def test_judge_bounds_the_requests_in_flight(server):
    server.latency = 0.2
    judge, _ = openai_judge(server, max_in_flight=3)
    out = judge.judge(requests(12))
    assert all(j.ok for j in out) and len(server.requests) == 12
    assert 2 <= server.most_in_flight <= 3


def test_judge_sends_large_images_shrunk(server):
    big = np.zeros((1000, 2000, 3), np.uint8)
    judge, _ = openai_judge(server, image_max_side=256)
    request = JudgeRequest("big", "web_edit", "make it brighter", encode_image(big), encode_image(picture(3)))
    assert judge.judge([request])[0].ok
    sent = images(server.requests[0]["body"])
    assert sent[0].size == (256, 128) and sent[0].format == "JPEG"
    assert sent[1].size == (48, 48) and sent[1].format == "PNG"  # small enough: its own bytes


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    return tiny_qwen2_vl(tmp_path_factory.mktemp("judge") / "tiny-qwen2-vl")


def test_local_judge_gives_the_real_model_two_images_and_the_rubric(tiny_judge_dir, tmp_path):
    config = JudgeConfig(
        backend="transformers",
        model=str(tiny_judge_dir),
        max_tokens=16,
        max_attempts=2,
        device="cpu",
        batch_size=2,
    )
    judge = Judge.from_config(config, str(tmp_path / "cache"))
    backend = judge.backend
    assert isinstance(backend, TransformersJudge)
    assert type(backend.model).__name__ == "Qwen2VLForConditionalGeneration"
    assert judge.model.startswith("sha256-tree:")  # a local judge by content, never by its path
    pairs = [judge.prepare(r) for r in requests(2)]
    inputs = backend.inputs(pairs)
    assert inputs["image_grid_thw"].shape[0] == 4  # source and target of each pair
    starts = backend.processor.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert [(row == starts).sum().item() for row in inputs["input_ids"]] == [2, 2]
    prompt = backend.prompt(pairs[1])
    assert "Rubric remove@1" in prompt and "remove the thing number 1" in prompt
    assert prompt.index("source") < prompt.index("<|image_pad|>") and prompt.endswith(
        "<|im_start|>assistant\n"
    )


def test_local_judge_turns_noise_into_a_drop_reason_after_retries(tiny_judge_dir, tmp_path):
    config = JudgeConfig(
        backend="transformers",
        model=str(tiny_judge_dir),
        max_tokens=16,
        max_attempts=2,
        device="cpu",
        batch_size=2,
    )
    judge = Judge.from_config(config, str(tmp_path / "cache"))
    import torch

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    out = judge.judge(requests(3))
    assert [j.key for j in out] == ["pair-0", "pair-1", "pair-2"]
    for judgement in out:  # a random model's text is no verdict: retried with sampling, then dropped
        assert judgement.error == JUDGE_MALFORMED and judgement.detail.count("invalid:") == 2
    assert judge.requests_sent == 6
    # the retries sampled from a generator of their own: the process's random state (which every other
    # thread's model draws from) is exactly where it was, and the same attempt samples the same text
    assert torch.equal(torch.random.get_rng_state(), state)
    again = Judge.from_config(config, str(tmp_path / "cache-2")).judge(requests(3))
    assert [j.detail for j in again] == [j.detail for j in out]


def test_judge_bench_runs_and_its_rerun_asks_nothing():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench" / "judge.py"
    args = [
        "--pairs",
        "24",
        "--latency",
        "0.02",
        "--concurrency",
        "4",
        "--baseline-pairs",
        "4",
        "--batch",
        "8",
    ]
    done = subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, timeout=300)
    assert "ratio to ideal:" in done.stdout, done.stderr[-2000:]
    assert "rerun from the cache: 0 requests" in done.stdout
    assert "failed judgements: 0; malformed requests: 0; requests sent: 24" in done.stdout
    assert "most requests in flight at the server: " in done.stdout and "(bound 4)" in done.stdout
