"""Instructions of grounded removal pairs and sessions from an LLM (a local OpenAI-compatible server):
written from the objects removed or added, validated (one that fails falls back to the template and
says why), cached by prompt; or the templates reworded (``paraphrase``). The writer is named in the
fingerprint by its endpoint and what the server's model list says it serves."""

from __future__ import annotations

import re

import pytest
from chat_server import ChatServer
from grounded_helpers import SESSION_SEED, grounded_config, write_session_photos

from ieiw.pipelines.grounded.config import GroundedRemovalConfig
from ieiw.pipelines.grounded.stage import GroundedRemovalStage
from ieiw.storage.config import WorkerEnv
from ieiw.storage.runner import RunOptions, ThreadExecutor, run_stage
from ieiw.storage.shards import iter_samples

SERVED = [{"id": "tiny-llm", "root": "tiny-llm-v1", "max_model_len": 512}]


def _answer(body: dict) -> str:
    """An instruction for the object named in the prompt; a preamble (invalid) for adding a red square;
    five rewordings when asked to paraphrase."""
    user = body["messages"][-1]["content"]
    if "rewrite" in body["messages"][0]["content"]:
        return "\n".join(f"{n}. {how} {user}" for n, how in enumerate(("quickly", "carefully"), 1))
    removed = re.search(r"Object removed: (.*)", user)
    if removed:
        return f"Please erase {removed.group(1)}."
    added = re.search(r"Object added: (.*)", user).group(1)
    return f"Sure: add {added}" if added == "a red square" else f"Put {added} back"


def _run(config: GroundedRemovalConfig, url) -> list:
    with ThreadExecutor(1) as executor:
        summary = run_stage(GroundedRemovalStage(config, str(url)), executor, RunOptions())
    assert summary.complete, summary.outcome()
    return list(iter_samples(str(url)))


def test_the_llm_writes_the_instructions_with_the_templates_as_the_fallback(tiny_models, tmp_path):
    photos = write_session_photos(tmp_path / "photos", ("duo", "red"))
    with ChatServer(default=_answer, models=SERVED) as server:
        llm = {
            "model": "tiny-llm",
            "base_url": server.base_url,
            "cache_dir": str(tmp_path / "llm-cache"),
            "max_attempts": 2,
            "backoff_seconds": 0.0,
        }
        config = grounded_config(
            {"path": str(photos), "dataset": "planted"},
            tiny_models,
            sessions={"max_turns": 2},
            instructions={"backend": "llm", "llm": llm},
        )
        stage = GroundedRemovalStage(config, "unused")
        identity = stage.fingerprint(WorkerEnv()).models["instructions.llm.model"]
        assert identity.startswith(f"api:{server.base_url}/tiny-llm#"), identity  # asked GET /v1/models
        assert {u.role: u.model for u in stage.model_uses()}["instructions"] == "LLM tiny-llm (writes)"

        samples = _run(config, tmp_path / "out")
        asked = len(server.requests)
        assert len(samples) == 8, f"seed {SESSION_SEED}: {[s.meta.instruction for s in samples]}"
        for sample in samples:
            meta = sample.meta
            named = meta.provenance.region_id.replace("+", " and the ")
            if meta.task == "add" and meta.extra.get("phrase") == "red square":
                # "Sure: add a red square" is no instruction: retried, then the template
                assert meta.instruction_source.startswith("template:add#"), meta
                assert "preamble" in meta.extra["instruction_fallback"]
            elif meta.task == "add":
                assert meta.instruction_source == "llm:tiny-llm" and meta.instruction.startswith("put a ")
            else:
                assert meta.instruction_source == "llm:tiny-llm", meta
                assert meta.instruction == f"please erase the {named}", meta.instruction
        sources = [s.meta.instruction_source.split(":", 1)[0] for s in samples]
        assert sorted(sources) == ["llm"] * 6 + ["template"] * 2, f"seed {SESSION_SEED}: {sources}"
        whole = next(s for s in samples if s.meta.turn == 0 and s.meta.task == "remove")
        assert whole.meta.instruction.count("square") == 2 and " and " in whole.meta.instruction

        # the answers are cached by prompt: a build elsewhere asks again only what failed
        again = _run(config, tmp_path / "again")
        assert {s.key: s.meta.instruction for s in again} == {s.key: s.meta.instruction for s in samples}
        repeated = [r["body"]["messages"][-1]["content"] for r in server.requests[asked:]]
        assert repeated and all("Object added: a red square" in r for r in repeated), repeated


def test_paraphrases_reword_the_templates(tiny_models, tmp_path):
    photos = write_session_photos(tmp_path / "photos", ("red",))
    with ChatServer(default=_answer, models=SERVED) as server:
        config = grounded_config(
            {"path": str(photos), "dataset": "planted"},
            tiny_models,
            instructions={
                "paraphrase": True,
                "paraphrases": 2,
                "llm": {"model": "tiny-llm", "base_url": server.base_url},
            },
        )
        samples = _run(config, tmp_path / "out")
    assert len(samples) == 2
    for sample in samples:
        meta = sample.meta
        assert re.fullmatch(rf"paraphrase:tiny-llm<-template:{meta.task}#\d+", meta.instruction_source), meta
        how, template = meta.instruction.split(" ", 1)
        assert how in ("quickly", "carefully") and "red square" in template, meta.instruction


def test_the_llm_must_be_named():
    with pytest.raises(ValueError, match=r"instructions\n.*need instructions.llm"):
        GroundedRemovalConfig.model_validate({"source": {"path": "."}, "instructions": {"backend": "llm"}})
