"""The judge's backends: an OpenAI-compatible chat endpoint, or a local vision-language model.

- :class:`OpenAIJudge`: the two images as ``image_url`` parts (data URLs) between the rubric's text
  parts, sent from a thread pool with at most ``max_in_flight`` requests in flight in this process
  (one semaphore shared by every batch, so concurrent tasks in one worker do not multiply it), a
  429's ``Retry-After`` pausing the whole pool (:class:`~ieiw.storage.chat.RateGate`), bounded
  retries, answers validated (:func:`~ieiw.quality.judge_rubrics.parse_answer`) and retried;
- :class:`TransformersJudge`: a Qwen2-VL-style model (``AutoModelForImageTextToText`` with its
  processor and chat template, e.g. ``Qwen2VLForConditionalGeneration``) loaded once with
  ``from_pretrained``; ``batch_size`` pairs per ``generate`` call, greedy first, and answers that
  fail validation asked again with sampling, up to ``max_attempts``.

Both answer every pair: a :class:`~ieiw.quality.judge_rubrics.ParsedAnswer` or a
:class:`~ieiw.quality.judge.JudgeFailure` whose reason is the drop reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from ieiw.quality.judge import (
    JUDGE_MALFORMED,
    JUDGE_REFUSED,
    JUDGE_UNAVAILABLE,
    Answered,
    JudgeConfig,
    JudgeFailure,
    PreparedPair,
)
from ieiw.quality.judge_rubrics import SYSTEM, ParsedAnswer, parse_answer, user_texts
from ieiw.storage.chat import ChatFailed, InvalidAnswer, RateGate, RetryPolicy, ask_chat, openai_client
from ieiw.storage.models import pretrained

T = TypeVar("T")
FAILURES = {"invalid": JUDGE_MALFORMED, "unavailable": JUDGE_UNAVAILABLE, "refused": JUDGE_REFUSED}


def chat_messages(pair: PreparedPair) -> list[dict[str, Any]]:
    """The OpenAI chat messages of a pair: the system prompt, then text, source, text, target, rubric."""
    request = pair.request
    before, between, after = user_texts(pair.rubric, request.instruction, request.task, pair.rewrite)
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": before},
                {"type": "image_url", "image_url": {"url": pair.source.data_url}},
                {"type": "text", "text": between},
                {"type": "image_url", "image_url": {"url": pair.target.data_url}},
                {"type": "text", "text": after},
            ],
        },
    ]


class OpenAIJudge:
    """A judge behind any OpenAI-compatible ``/v1/chat/completions`` endpoint with image input."""

    def __init__(
        self, config: JudgeConfig, client: Any | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.config = config
        self.client = client or openai_client(config.base_url, config.api_key_env, config.timeout)
        self.sleep = sleep
        self.policy = RetryPolicy(config.max_attempts, config.backoff_seconds, config.max_backoff_seconds)
        self.slots = threading.BoundedSemaphore(config.max_in_flight)
        self.gate = RateGate()
        self._count_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.calls = 0  # requests sent (cache hits send none)

    def _count(self) -> None:
        with self._count_lock:
            self.calls += 1

    def answer_one(self, pair: PreparedPair) -> ParsedAnswer | JudgeFailure:
        params = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        try:
            return ask_chat(
                self.client,
                self.config.model,
                chat_messages(pair),
                params,
                lambda answer: parse_answer(answer, pair.rewrite),
                self.policy,
                self.sleep,
                self._count,
                self.gate,
                self.slots,
            )
        except ChatFailed as failed:
            return JudgeFailure(FAILURES[failed.kind], str(failed))

    def submit(self, fn: Callable[[PreparedPair], T], pair: PreparedPair) -> Future:
        """Run ``fn(pair)`` in this judge's pool: ``max_in_flight`` threads shared by every caller in the
        process, so requests stay in flight across batches and never exceed the bound."""
        with self._count_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.config.max_in_flight, thread_name_prefix="ieiw-judge")
        return self._pool.submit(fn, pair)

    def answer(
        self, pairs: Sequence[PreparedPair], answered: Answered | None = None
    ) -> list[ParsedAnswer | JudgeFailure]:
        def one(pair: PreparedPair) -> ParsedAnswer | JudgeFailure:
            return self.answer_one(pair)

        futures = [self.submit(one, pair) for pair in pairs]
        results = []
        for n, future in enumerate(futures):
            results.append(future.result())
            if answered is not None:
                answered(n, results[-1])
        return results


class TransformersJudge:
    """A local Qwen2-VL-style judge: the model and processor of one checkpoint folder (or hub id)."""

    def __init__(self, config: JudgeConfig, model: Any, processor: Any, device: str) -> None:
        self.config = config
        self.model = model
        self.processor = processor
        self.device = device
        self._lock = threading.Lock()  # one generate at a time: the model is shared by the process
        self.calls = 0

    @classmethod
    def load(cls, config: JudgeConfig) -> TransformersJudge:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
        name, options = pretrained(config.model)  # a hub id at its pinned commit, or a folder
        model = AutoModelForImageTextToText.from_pretrained(name, dtype=dtype, **options).to(device).eval()
        processor = AutoProcessor.from_pretrained(name, **options)
        processor.tokenizer.padding_side = "left"  # batched generation continues every row at its end
        return cls(config, model, processor, device)

    def prompt(self, pair: PreparedPair) -> str:
        before, between, after = user_texts(
            pair.rubric, pair.request.instruction, pair.request.task, pair.rewrite
        )
        messages = [
            {"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": before},
                    {"type": "image"},
                    {"type": "text", "text": between},
                    {"type": "image"},
                    {"type": "text", "text": after},
                ],
            },
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def inputs(self, pairs: Sequence[PreparedPair]):
        """The processor's tensors for ``pairs``: one prompt each, with its source and target images."""
        images = [image for p in pairs for image in (p.source.pil(), p.target.pil())]
        return self.processor(
            text=[self.prompt(p) for p in pairs], images=images, padding=True, return_tensors="pt"
        )

    def generate(self, pairs: Sequence[PreparedPair], attempt: int) -> list[str]:
        import torch

        inputs = self.inputs(pairs).to(self.device)
        options: dict[str, Any] = {"max_new_tokens": self.config.max_tokens, "do_sample": False}
        if attempt or self.config.temperature > 0:  # a retry samples: greedy would repeat the answer
            # Sampled by the Gumbel-max trick from a generator of its own (seeded by the attempt), with
            # greedy decoding: the process's random state, which other threads' models use, is untouched.
            temperature = max(self.config.temperature, 0.7)
            options["logits_processor"] = [GumbelSampling(temperature, attempt)]
        with self._lock, torch.inference_mode():
            output = self.model.generate(**inputs, **options)
            self.calls += len(pairs)
        new = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)

    def answer(
        self, pairs: Sequence[PreparedPair], answered: Answered | None = None
    ) -> list[ParsedAnswer | JudgeFailure]:
        results: list[ParsedAnswer | JudgeFailure | None] = [None] * len(pairs)
        problems: list[list[str]] = [[] for _ in pairs]
        todo = list(range(len(pairs)))
        for attempt in range(self.config.max_attempts):
            if not todo:
                break
            still = []
            for start in range(0, len(todo), self.config.batch_size):
                chunk = todo[start : start + self.config.batch_size]
                texts = self.generate([pairs[i] for i in chunk], attempt)
                for i, text in zip(chunk, texts, strict=True):
                    try:
                        results[i] = parse_answer(text, pairs[i].rewrite)
                        if answered is not None:
                            answered(i, results[i])
                    except InvalidAnswer as error:
                        problems[i].append(f"invalid:{error.reason}")
                        still.append(i)
            todo = still
        for i in todo:
            results[i] = JudgeFailure(
                JUDGE_MALFORMED,
                f"{self.config.model}: no valid answer in {self.config.max_attempts} attempts "
                f"({', '.join(problems[i])})",
            )
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # a lost answer would shift every row after it
            raise RuntimeError(f"the judge's backend lost the answers of pairs {missing[:5]} of {len(pairs)}")
        return results  # type: ignore[return-value]


class GumbelSampling:
    """A logits processor that turns greedy decoding into sampling at ``temperature``, drawing from a
    ``torch.Generator`` of its own seeded with ``seed``: ``argmax(logits / T + Gumbel noise)`` is a draw
    from ``softmax(logits / T)``, and no other model's random numbers are touched."""

    def __init__(self, temperature: float, seed: int) -> None:
        self.temperature = temperature
        self.seed = seed
        self.generator = None

    def __call__(self, input_ids, scores):
        import torch

        if self.generator is None:
            self.generator = torch.Generator(device=scores.device).manual_seed(self.seed)
        uniform = torch.rand(
            scores.shape, generator=self.generator, device=scores.device, dtype=torch.float32
        )
        gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-20)).clamp_min(1e-20))
        return scores.float() / self.temperature + gumbel


def load_backend(config: JudgeConfig) -> OpenAIJudge | TransformersJudge:
    if config.backend == "openai":
        return OpenAIJudge(config)
    return TransformersJudge.load(config)
