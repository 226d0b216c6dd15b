"""The LLM instruction writer and paraphraser against a small OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import pytest
from replacement_llm_server import ChatServer

from ieiw.pipelines.instructions.llm import (
    InstructionWriter,
    InvalidAnswer,
    LLMConfig,
    LLMError,
    validate_instruction,
)
from ieiw.pipelines.instructions.templates import TEMPLATES, render_replace
from ieiw.pipelines.replacement.config import InstructionConfig
from ieiw.pipelines.replacement.wording import write_instruction


@pytest.fixture
def server():
    with ChatServer() as running:
        yield running


def _writer(server: ChatServer, tmp_path=None, **overrides) -> tuple[InstructionWriter, list[float]]:
    slept: list[float] = []
    config = LLMConfig(
        model="test-model",
        base_url=server.base_url,
        api_key_env="IEIW_TEST_LLM_KEY",
        timeout=0.5,
        max_attempts=3,
        backoff_seconds=0.01,
        cache_dir=str(tmp_path / "cache") if tmp_path else None,
    )
    return InstructionWriter(config.model_copy(update=overrides), sleep=slept.append), slept


def test_replacement_llm_writes_one_instruction(server, monkeypatch):
    monkeypatch.setenv("IEIW_TEST_LLM_KEY", "sk-test-123")
    writer, _ = _writer(server)
    text = writer.write("a cat on a sofa", "a dog on a sofa", "cat", "dog")
    assert text == "replace the cat with a dog" and writer.source == "llm:test-model"
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "test-model"
    assert request["authorization"] == "Bearer sk-test-123"
    user = request["body"]["messages"][1]["content"]
    assert "a cat on a sofa" in user and "a dog on a sofa" in user and "dog" in user


def test_replacement_llm_retries_a_malformed_answer(server):
    server.script.extend(
        [
            ("answer", 'Sure! Here is the instruction: "replace the cat with a dog"'),
            ("answer", "Replace the cat with a dog."),
        ]
    )
    writer, slept = _writer(server)
    assert writer.write("a cat", "a dog", "cat", "dog") == "replace the cat with a dog"
    assert writer.calls == 2 and len(slept) == 1


def test_replacement_llm_retries_after_a_timeout(server):
    server.script.append(("stall", 1.5))
    writer, _ = _writer(server)
    assert writer.write("a cat", "a dog", "cat", "dog") == "replace the cat with a dog"
    assert writer.calls == 2


def test_replacement_llm_honours_retry_after_on_429(server):
    server.script.append(("429", 2))
    writer, slept = _writer(server)
    assert writer.write("a cat", "a dog", "cat", "dog") == "replace the cat with a dog"
    assert slept == [2.0] and writer.calls == 2


def test_replacement_llm_gives_up_within_the_bound(server):
    server.script.extend([("answer", "Here you go"), ("429", 0), ("answer", "paint it blue")])
    writer, slept = _writer(server)
    with pytest.raises(LLMError) as error:
        writer.write("a cat", "a dog", "cat", "dog")
    assert writer.calls == 3 and len(slept) == 2
    assert "invalid:preamble" in str(error.value) and "invalid:misses_the_change" in str(error.value)


def test_replacement_llm_does_not_retry_a_client_error(server):
    server.script.append(("status", 400))
    writer, slept = _writer(server)
    with pytest.raises(LLMError, match="HTTP 400"):
        writer.write("a cat", "a dog", "cat", "dog")
    assert writer.calls == 1 and slept == []


def test_replacement_llm_cache_makes_a_rerun_free(server, tmp_path):
    first, _ = _writer(server, tmp_path)
    assert first.write("a cat", "a dog", "cat", "dog") == "replace the cat with a dog"
    server.script.append(("status", 500))  # would fail if asked again
    second, _ = _writer(server, tmp_path)
    assert second.write("a cat", "a dog", "cat", "dog") == "replace the cat with a dog"
    assert second.calls == 0 and len(server.requests) == 1


def test_replacement_llm_paraphrases_and_drops_bad_lines(server):
    server.script.append(
        (
            "answer",
            '1. swap the cat for a dog\n2. Replace the cat with a dog.\n- "a dog"\n'
            "3. change the cat into a dog, please. Then smile.\nturn the cat into a dog",
        )
    )
    writer, _ = _writer(server)
    options = writer.paraphrase("replace the cat with a dog", n=5, must_mention=["dog"])
    assert options == ["swap the cat for a dog", "turn the cat into a dog"]
    assert "5 different rewordings" in server.requests[0]["body"]["messages"][0]["content"]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty"),
        ("replace the cat\nwith a dog", "several_lines"),
        ('"replace the cat with a dog"', "quoted"),
        ("Instruction: replace the cat with a dog", "preamble"),
        ("Sure, replace the cat with a dog", "preamble"),
        ("replace the cat. Add a dog.", "not_one_sentence"),
        ("make it nicer", "misses_the_change"),
        ("replace " + "very " * 30 + "dog", "too_long"),
    ],
)
def test_replacement_llm_validation_rejects(answer, reason):
    with pytest.raises(InvalidAnswer) as error:
        validate_instruction(answer, ["dog"])
    assert error.value.reason == reason


def test_replacement_llm_validation_accepts_plain_instructions():
    assert (
        validate_instruction("  Replace the cats with two dogs. ", ["dog"])
        == "replace the cats with two dogs"
    )
    assert (
        validate_instruction("turn the man's hat into a crown", ["crown"])
        == "turn the man's hat into a crown"
    )


def test_replacement_templates_cover_replace():
    assert len(TEMPLATES["replace"]) >= 10
    text, source = render_replace("key-1", "cat", "orange")
    assert source.startswith("template:replace#") and "the cat" in text and "an orange" in text
    assert render_replace("key-1", "cat", "orange") == (text, source)
    sources = {render_replace(f"key-{i}", "cat", "dog")[1] for i in range(200)}
    assert len(sources) == len(TEMPLATES["replace"])


def test_replacement_instruction_paths_are_recorded(server):
    writer, _ = _writer(server, max_attempts=2)
    llm = InstructionConfig(backend="llm", llm=writer.config)
    assert write_instruction("k", "a cat", "a dog", "cat", "dog", writer, llm).source == "llm:test-model"
    server.script.extend([("status", 500), ("status", 500)])
    fallback = write_instruction("k", "a cat", "a dog", "cat", "dog", writer, llm)
    assert (
        fallback.source.startswith("template:replace#")
        and "InternalServerError" in fallback.notes["instruction_fallback"]
    )
    server.script.append(("answer", "swap the cat for a dog\nexchange the cat for a dog"))
    paraphrased = write_instruction(
        "k",
        "a cat",
        "a dog",
        "cat",
        "dog",
        writer,
        InstructionConfig(backend="template", llm=writer.config, paraphrase=True),
    )
    assert paraphrased.text in {"swap the cat for a dog", "exchange the cat for a dog"}
    assert paraphrased.source.startswith("paraphrase:test-model<-template:replace#")
    assert write_instruction("k", "a", "b", "cat", "dog", None, InstructionConfig()).source.startswith(
        "template:"
    )
