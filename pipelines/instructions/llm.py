"""Instructions from an LLM through any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama).

Two calls, both validated, retried with a bound, and cached by prompt::

    writer = InstructionWriter(LLMConfig(base_url="http://localhost:8000/v1", model="Qwen2.5-7B-Instruct"))
    writer.write("a cat on a sofa", "a dog on a sofa", "cat", "dog")   # -> "replace the cat with a dog"
    writer.paraphrase("remove the red car", n=5, must_mention=["car"])  # -> five rewordings

The key comes from the environment variable named by ``api_key_env``, never from a file or a log.
Transient failures (timeouts, connection errors, 429 and 5xx answers) and invalid answers are
retried up to ``max_attempts``; anything else, or running out of attempts, raises :class:`LLMError`
so the caller falls back to a template and records why.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from ieiw.storage.answer_cache import PromptCache, prompt_key
from ieiw.storage.chat import ChatFailed, InvalidAnswer, RetryPolicy, ask_chat, openai_client
from ieiw.storage.config import model_ref, operational, output
from ieiw.storage.models import served_identity

__all__ = ["InstructionWriter", "InvalidAnswer", "LLMConfig", "LLMError", "validate_instruction"]

T = TypeVar("T")

WRITE_SYSTEM = (
    "You write image-editing instructions. Given captions of an image before and after an edit and the "
    "objects involved, answer with ONE short imperative sentence that tells an editor what to change. "
    "Answer with the instruction only: no quotes, no preamble, no explanation."
)
PARAPHRASE_SYSTEM = (
    "You rewrite image-editing instructions. Give {n} different rewordings of the instruction, each an "
    "imperative sentence with the same meaning, one per line, without numbering, quotes or preamble."
)
PREAMBLE = re.compile(
    r"^(sure|here|certainly|okay|ok|of course|instruction|answer|as an ai|i )\b", re.IGNORECASE
)
QUOTES = set('"“”«»`')
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


class LLMConfig(BaseModel):
    """An OpenAI-compatible endpoint; ``base_url`` None means api.openai.com."""

    model_config = ConfigDict(extra="forbid")

    model: str = model_ref("gpt-4o-mini", identity="identity")  # by endpoint and what it serves
    base_url: str | None = operational(None)  # vLLM: http://host:8000/v1, Ollama: http://host:11434/v1
    api_key_env: str = operational("OPENAI_API_KEY")
    temperature: float = 0.7
    max_tokens: int = 96
    timeout: float = operational(30.0)
    max_attempts: int = operational(4)
    backoff_seconds: float = operational(1.0)
    max_backoff_seconds: float = operational(30.0)
    max_words: int = 25
    cache_dir: str | None = output(None)  # None: no cache

    def identity(self, model: str | None = None) -> str:
        """The writer's model by where it is served and what the server says it is."""
        return served_identity(self.base_url, model or self.model, self.api_key_env)


class LLMError(RuntimeError):
    """The LLM gave no usable answer within the attempts allowed (or refused the request)."""


def _words(text: str) -> set[str]:
    out = set()
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        out.add(word)
        out.add(word[:-1] if word.endswith("s") and len(word) > 3 else word)
    return out


def validate_instruction(answer: str, must_mention: Sequence[str] = (), max_words: int = 25) -> str:
    """The cleaned instruction, or :class:`InvalidAnswer`: one sentence, naming the change, bare."""
    text = " ".join(answer.strip().split())
    if not text:
        raise InvalidAnswer("empty", answer)
    if "\n" in answer.strip():
        raise InvalidAnswer("several_lines", answer)
    if any(c in QUOTES for c in text) or (text[0] == "'" and text[-1] == "'"):
        raise InvalidAnswer("quoted", answer)
    if PREAMBLE.match(text) or ":" in text:
        raise InvalidAnswer("preamble", answer)
    body = text.rstrip(".!")
    if re.search(r"[.!?;]\s+\S", body) or "?" in text:
        raise InvalidAnswer("not_one_sentence", answer)
    if len(body.split()) > max_words:
        raise InvalidAnswer("too_long", answer)
    wanted = [w for w in must_mention if w]
    if wanted and not any(_words(w) & _words(body) for w in wanted):
        raise InvalidAnswer("misses_the_change", answer)
    return body[0].lower() + body[1:] if body[:2] != body[:2].upper() else body


class InstructionWriter:
    """Writes and paraphrases instructions; one per process, shared by every batch."""

    def __init__(
        self, config: LLMConfig, client: Any | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.config = config
        self.client = client or openai_client(config.base_url, config.api_key_env, config.timeout)
        self.cache = PromptCache(config.cache_dir) if config.cache_dir else None
        self.sleep = sleep
        self.calls = 0  # requests sent (cache hits send none)

    @property
    def source(self) -> str:
        return f"llm:{self.config.model}"

    def write(self, source_caption: str, target_caption: str, source_object: str, target_object: str) -> str:
        """One imperative instruction that turns the source into the target."""
        user = (
            f"Before: {source_caption}\nAfter: {target_caption}\n"
            f"Object before: {source_object}\nObject after: {target_object}\nInstruction:"
        )
        messages = [{"role": "system", "content": WRITE_SYSTEM}, {"role": "user", "content": user}]
        return self.ask(messages, lambda a: validate_instruction(a, [target_object], self.config.max_words))

    def paraphrase(self, instruction: str, n: int = 5, must_mention: Sequence[str] = ()) -> list[str]:
        """Up to ``n`` valid rewordings of ``instruction`` (at least one, or :class:`LLMError`)."""
        messages = [
            {"role": "system", "content": PARAPHRASE_SYSTEM.format(n=n)},
            {"role": "user", "content": instruction},
        ]

        def parse(answer: str) -> list[str]:
            found: list[str] = []
            for line in answer.splitlines():
                line = BULLET.sub("", line).strip()
                if not line:
                    continue
                try:
                    text = validate_instruction(line, must_mention, self.config.max_words)
                except InvalidAnswer:
                    continue  # one bad line costs that line; none valid fails the answer below
                if text.lower() != instruction.lower() and text not in found:
                    found.append(text)
            if not found:
                raise InvalidAnswer("no_valid_paraphrase", answer)
            return found[:n]

        return self.ask(messages, parse)

    def ask(self, messages: list[dict[str, str]], parse: Callable[[str], T]) -> T:
        """Send ``messages`` (or answer from the cache), parse the reply, retry within the bound."""
        params = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        key = prompt_key(self.config.model, messages, params)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return cached
        policy = RetryPolicy(
            self.config.max_attempts, self.config.backoff_seconds, self.config.max_backoff_seconds
        )
        try:
            parsed = ask_chat(
                self.client, self.config.model, messages, params, parse, policy, self.sleep, self._count
            )
        except ChatFailed as failed:
            raise LLMError(str(failed)) from failed
        if self.cache is not None:
            self.cache.put(key, parsed)
        return parsed

    def _count(self) -> None:
        self.calls += 1
