"""A vision-language judge of editing pairs: scores with reasons, as OmniEdit and ImgEdit filtered.

The judge looks at a pair's source and target with its instruction and task, and answers the task's
rubric (:mod:`ieiw.quality.judge_rubrics`): ``compliance``, ``preservation``, ``realism`` and
``overall``, each 0 to 10 with a one-sentence reason, and optionally the instruction the pair
actually shows. Two backends (:mod:`ieiw.quality.judge_backends`): any OpenAI-compatible chat
endpoint with image input (vLLM or SGLang serving Qwen2.5-VL, OpenAI itself), or a local
Qwen2-VL-style model through transformers::

    judge:
      backend: openai
      model: Qwen/Qwen2.5-VL-7B-Instruct
      base_url: http://gpu-box:8000/v1      # key from $OPENAI_API_KEY (api_key_env)
      max_in_flight: 16
      rewrite_instruction: true

:class:`Judge` judges a batch of pairs at once: images are shrunk to ``image_max_side`` and sent as
data URLs; up to ``max_in_flight`` requests are in flight; answers are cached by content, keyed by
the two images' hashes (as sent), the instruction, the task, the judge model's identity and the
rubric's identity (:func:`judge_key`), so a rerun, or another stage asking the same question, sends
nothing. A pair the judge cannot answer within its attempts becomes a :class:`Judgement` with
``error`` set to a drop reason (``judge_malformed_answer``, ``judge_unavailable``,
``judge_refused``), never an exception; failures are not cached, so a rerun asks again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import posixpath
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from ieiw.quality.judge_rubrics import CRITERIA, ParsedAnswer, Rubric, rubric_for, rubric_identities
from ieiw.storage import fs
from ieiw.storage.answer_cache import PromptCache
from ieiw.storage.config import model_ref, operational, output, precision
from ieiw.storage.identity import model_identity
from ieiw.storage.models import served_identity

log = logging.getLogger(__name__)
# the judge as table columns (the score stage's and the candidate judgements'): scores, then words
JUDGE_SCORES = tuple(f"judge_{name}" for name in CRITERIA)
JUDGE_COLUMNS = (
    "judge_error",
    "judge_detail",
    "judge_reasons",
    "judge_instruction",
    "judge_rubric",
    "judge_model",
)

JUDGE_MALFORMED = "judge_malformed_answer"
JUDGE_UNAVAILABLE = "judge_unavailable"
JUDGE_REFUSED = "judge_refused"
JUDGE_UNREADABLE = "judge_unreadable_image"
CACHE_DIR = "judge-cache"
SENT_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class JudgeConfig(BaseModel):
    """Which judge, where it runs, and how hard to push it (the last group is left out of fingerprints)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["openai", "transformers"] = "openai"
    # the served model's name, or a local folder / hub id
    model: str = model_ref("Qwen/Qwen2.5-VL-7B-Instruct", identity="identity")
    base_url: str | None = operational(None)  # openai: None means api.openai.com
    api_key_env: str = operational("OPENAI_API_KEY")
    temperature: float = 0.0
    max_tokens: int = 400
    image_max_side: int = Field(default=768, ge=32)
    rewrite_instruction: bool = False  # also write the instruction the pair actually shows
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = precision("auto")  # transformers
    # how the judge is driven: never part of a fingerprint
    max_in_flight: int = operational(8, ge=1)
    timeout: float = operational(60.0)
    max_attempts: int = operational(3, ge=1)
    backoff_seconds: float = operational(1.0)
    max_backoff_seconds: float = operational(30.0)
    cache_url: str | None = output(None)  # default: the build's judge answer cache
    device: str | None = operational(None)  # transformers: None picks cuda when there is one
    batch_size: int = operational(4, ge=1)  # transformers: pairs per generate call

    def pins(self, field: str) -> bool:
        """A local judge's model is a hub id or a folder, pinned as every model is; a served one's is a
        name on its server."""
        return self.backend == "transformers"

    def identity(self, model: str | None = None) -> str:
        """The judge model by identity: a served model by its endpoint, name and what the server says it
        serves (:func:`ieiw.storage.models.served_identity`), a local one by content."""
        model = model or self.model
        if self.backend == "openai":
            return served_identity(self.base_url, model, self.api_key_env)
        return model_identity(model) or model

    def fingerprint_extra(self) -> dict:
        """The rubrics' versions: they shape the answers as much as the decoding settings do."""
        return {"rubrics": rubric_identities(self.rewrite_instruction)}


def default_cache_url(stage_url: str) -> str:
    """``judge-cache/`` beside the stage folder that asks (outside it, so a rebuild keeps the answers)."""
    parent = posixpath.dirname(str(stage_url).rstrip("/"))
    return fs.join(parent, CACHE_DIR) if parent else CACHE_DIR


@dataclass(frozen=True)
class JudgeRequest:
    """One pair to judge: its key, task, instruction and encoded images (PNG, JPEG, ...)."""

    key: str
    task: str
    instruction: str
    source: bytes
    target: bytes


@dataclass(frozen=True)
class SentImage:
    data: bytes
    mime: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64," + base64.b64encode(self.data).decode("ascii")

    def pil(self) -> Image.Image:
        return Image.open(io.BytesIO(self.data)).convert("RGB")


def prepare_image(data: bytes, max_side: int) -> SentImage:
    """The image as sent: its own bytes when small enough and in a format every server reads, else a
    JPEG of it with its long side at ``max_side``."""
    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= max_side and image.format in SENT_FORMATS:
            return SentImage(data, SENT_FORMATS[image.format])
        picture = image.convert("RGB")
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    return SentImage(buffer.getvalue(), "image/jpeg")


@dataclass(frozen=True)
class PreparedPair:
    """A request as the backend sends it: the images as sent, the rubric, the cache key."""

    request: JudgeRequest
    source: SentImage
    target: SentImage
    rubric: Rubric
    rewrite: bool
    cache_key: str


@dataclass(frozen=True)
class JudgeFailure:
    """No usable answer: ``reason`` is the drop reason, ``detail`` what happened on each attempt."""

    reason: str
    detail: str


Answered = Callable[[int, "ParsedAnswer | JudgeFailure"], None]


class JudgeBackend(Protocol):
    """Answers prepared pairs, in order: a parsed answer or a failure for each, never an exception;
    ``answered(i, answer)`` is called as soon as pair ``i`` has its answer (from any thread). A
    backend that answers pairs one by one (a server) also has ``answer_one(pair)`` and
    ``submit(fn, pair) -> Future`` (its own bounded pool), which :meth:`Judge.submit` uses."""

    calls: int

    def answer(
        self, pairs: Sequence[PreparedPair], answered: Answered | None = None
    ) -> list[ParsedAnswer | JudgeFailure]: ...


@dataclass
class Judgement:
    """The judge's verdict on one pair: ``scores`` and ``reasons`` by criterion, or ``error`` (a drop
    reason) with ``detail``; ``instruction`` is the judge's own wording when asked for."""

    key: str
    scores: dict[str, float] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    instruction: str = ""
    rubric: str = ""
    model: str = ""
    error: str | None = None
    detail: str = ""
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict:
        """The part kept with a sample (its ``judge`` field): model, rubric, scores, reasons."""
        return {"model": self.model, "rubric": self.rubric, "scores": self.scores, "reasons": self.reasons}

    def columns(self) -> dict:
        """As table columns (:data:`JUDGE_SCORES`, NaN on failure, and :data:`JUDGE_COLUMNS`)."""
        out: dict = {f"judge_{c}": float(self.scores.get(c, math.nan)) for c in CRITERIA}
        out.update(
            judge_error=self.error,
            judge_detail=self.detail or None,
            judge_reasons=json.dumps(self.reasons, sort_keys=True) if self.ok else None,
            judge_instruction=self.instruction or None,
            judge_rubric=self.rubric or None,
            judge_model=self.model or None,
        )
        return out


def judge_key(
    source: SentImage, target: SentImage, instruction: str, task: str, model: str, rubric: str, decoding: dict
) -> str:
    """The cache key of a question: the images by hash, the instruction, the task, the judge model, the
    rubric (its identity says its version) and the decoding settings."""
    payload = json.dumps(
        [source.digest, target.digest, instruction, str(task), model, rubric, decoding],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Judge:
    """Judges batches of pairs with one backend (loaded once per process) and an answer cache."""

    def __init__(self, config: JudgeConfig, backend: JudgeBackend, cache: PromptCache | None = None) -> None:
        self.config = config
        self.backend = backend
        self.cache = cache
        self.model = config.identity()
        self.cache_hits = 0
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: JudgeConfig, cache_url: str | None = None) -> Judge:
        from ieiw.quality.judge_backends import load_backend

        url = config.cache_url or cache_url
        return cls(config, load_backend(config), PromptCache(url) if url else None)

    def with_cache(self, cache_url: str | None) -> Judge:
        """The same judge (and loaded backend) answering through the cache at ``cache_url``."""
        url = self.config.cache_url or cache_url
        return Judge(self.config, self.backend, PromptCache(url) if url else None)

    @property
    def requests_sent(self) -> int:
        return self.backend.calls

    def prepare(self, request: JudgeRequest) -> PreparedPair | Judgement:
        rubric = rubric_for(request.task)
        rewrite = self.config.rewrite_instruction
        try:
            source = prepare_image(request.source, self.config.image_max_side)
            target = prepare_image(request.target, self.config.image_max_side)
        except (OSError, ValueError) as error:
            return Judgement(
                request.key,
                rubric=rubric.identity(rewrite),
                model=self.model,
                error=JUDGE_UNREADABLE,
                detail=re.sub(r" at 0x[0-9a-fA-F]+", "", str(error))[:300],  # no memory addresses
            )
        decoding = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        key = judge_key(
            source, target, request.instruction, request.task, self.model, rubric.identity(rewrite), decoding
        )
        return PreparedPair(request, source, target, rubric, rewrite, key)

    def _cached(self, pair: PreparedPair) -> Judgement | None:
        hit = self.cache.get(pair.cache_key) if self.cache is not None else None
        if not (isinstance(hit, dict) and _valid_cached(hit)):
            return None
        with self._lock:
            self.cache_hits += 1
        return Judgement(
            pair.request.key,
            hit["scores"],
            hit["reasons"],
            hit.get("instruction", ""),
            pair.rubric.identity(pair.rewrite),
            self.model,
            cached=True,
        )

    def _keep(self, pair: PreparedPair, answer: ParsedAnswer | JudgeFailure) -> None:
        """Cache a valid answer as soon as it comes, in the thread that got it (failures are asked again)."""
        if self.cache is not None and not isinstance(answer, JudgeFailure):
            entry = {"scores": answer.scores, "reasons": answer.reasons, "instruction": answer.instruction}
            self.cache.put(pair.cache_key, entry)

    def _judgement(self, pair: PreparedPair, answer: ParsedAnswer | JudgeFailure) -> Judgement:
        rubric = pair.rubric.identity(pair.rewrite)
        if isinstance(answer, JudgeFailure):
            log.warning("judge: %s: %s (%s)", pair.request.key, answer.reason, answer.detail)
            return Judgement(
                pair.request.key,
                rubric=rubric,
                model=self.model,
                error=answer.reason,
                detail=answer.detail[:500],
            )
        return Judgement(
            pair.request.key, answer.scores, answer.reasons, answer.instruction, rubric, self.model
        )

    def _one(self, pair: PreparedPair) -> Judgement:
        """One pair, in a worker thread: from the cache, or asked and then cached."""
        cached = self._cached(pair)
        if cached is not None:
            return cached
        answer = self.backend.answer_one(pair)
        self._keep(pair, answer)
        return self._judgement(pair, answer)

    def submit(self, requests: Sequence[JudgeRequest]) -> PendingJudgements:
        """Start judging ``requests`` and return at once: a caller can go on working (embed the next
        batch, send the next pairs) while they are in flight. A backend that answers whole batches (the
        local model) judges them now."""
        if not hasattr(self.backend, "submit"):
            return PendingJudgements(list(self.judge(requests)))
        items: list[Judgement | Future] = []
        for request in requests:
            prepared = self.prepare(request)
            items.append(
                prepared if isinstance(prepared, Judgement) else self.backend.submit(self._one, prepared)
            )
        return PendingJudgements(items)

    def judge(
        self, requests: Sequence[JudgeRequest], progress: Callable[[int], None] | None = None
    ) -> list[Judgement]:
        """One :class:`Judgement` per request, in order: cached answers where there are, the rest asked
        (up to ``max_in_flight`` at once), each cached as it comes."""
        if hasattr(self.backend, "submit"):
            return self.submit(requests).result(progress)
        prepared = [self.prepare(r) for r in requests]
        out: list[Judgement | None] = [p if isinstance(p, Judgement) else self._cached(p) for p in prepared]
        asked = [(i, p) for i, p in enumerate(prepared) if out[i] is None and isinstance(p, PreparedPair)]
        if progress is not None and len(requests) > len(asked):
            progress(len(requests) - len(asked))
        pairs = [p for _, p in asked]
        answers = self.backend.answer(pairs, lambda n, answer: self._keep(pairs[n], answer)) if pairs else []
        for (i, pair), answer in zip(asked, answers, strict=True):
            out[i] = self._judgement(pair, answer)
        if progress is not None and asked:
            progress(len(asked))
        missing = [i for i, j in enumerate(out) if j is None]
        if missing:  # a lost answer would shift every row after it
            raise RuntimeError(f"the judge returned no judgement for requests {missing[:5]} of {len(out)}")
        return out  # type: ignore[return-value]


class PendingJudgements:
    """Judgements on their way: :meth:`result` waits for them, in the order they were asked."""

    def __init__(self, items: list[Judgement | Future]) -> None:
        self.items = items

    def result(self, progress: Callable[[int], None] | None = None) -> list[Judgement]:
        out = []
        for item in self.items:
            out.append(item.result() if isinstance(item, Future) else item)
            if progress is not None:
                progress(1)
        return out


def _valid_cached(entry: dict) -> bool:
    scores = entry.get("scores")
    return isinstance(scores, dict) and all(isinstance(scores.get(c), int | float) for c in CRITERIA)
