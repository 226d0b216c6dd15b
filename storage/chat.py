"""One chat request to an OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, Ollama), validated and
retried within a bound: shared by the LLM instruction writer (``pipelines``) and the VLM judge
(``quality``), the lowest layer both may import.

:func:`ask_chat` sends ``messages``, parses the answer with the caller's ``parse`` (which raises
:class:`InvalidAnswer` for an answer that fails validation) and retries transient failures
(timeouts, connection errors, 429 and 5xx answers) and invalid answers up to ``max_attempts``,
waiting an exponential backoff or the server's ``Retry-After``, whichever is longer. Running out of
attempts, or an answer that is not worth repeating (another 4xx), raises :class:`ChatFailed` with
every problem met, so the caller decides: a fallback (the instruction writer) or a drop (the judge).
The key comes from the environment variable named by the caller, never from a file or a log.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Failure = Literal["invalid", "unavailable", "refused"]


class InvalidAnswer(ValueError):
    """An answer that fails validation; ``reason`` is a short slug."""

    def __init__(self, reason: str, answer: str) -> None:
        super().__init__(f"{reason}: {answer[:200]!r}")
        self.reason = reason


class ChatFailed(RuntimeError):
    """No usable answer: ``kind`` is ``invalid`` (answers came but failed validation), ``unavailable``
    (only timeouts, rate limits and server errors) or ``refused`` (a 4xx, not retried)."""

    def __init__(self, message: str, kind: Failure, problems: list[str], status: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.problems, self.status = kind, problems, status


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt ``attempt`` (1-based after the first)."""
        delay = self.backoff_seconds * 2 ** (attempt - 1)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.max_backoff_seconds)


class RateGate:
    """Shared by the threads of one client: a 429's ``Retry-After`` holds every request, not only the
    one that got it, so a rate-limited server is not hit by the rest of the pool meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def wait(self, sleep: Callable[[float], None]) -> None:
        with self._lock:
            left = self._until - time.monotonic()
        if left > 0:
            sleep(left)


def openai_client(base_url: str | None, api_key_env: str, timeout: float):
    """An OpenAI client for ``base_url`` (None: api.openai.com) with its own retries off (ours count)."""
    from openai import OpenAI

    return OpenAI(
        base_url=base_url, api_key=os.environ.get(api_key_env) or "not-needed", timeout=timeout, max_retries=0
    )


def retry_after(error: Any) -> float | None:
    """The server's ``Retry-After`` seconds of a 429, when it sent one."""
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _create(client: Any, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> Any:
    """``chat.completions.create`` of plain-JSON messages, posted as they are: the SDK's request-type
    transform walks every message part (milliseconds of CPU per request, under the GIL, which a pool of
    many requests in flight cannot afford); ``client.post`` is its documented route for a raw body."""
    from openai.types.chat import ChatCompletion

    return client.post(
        "/chat/completions", body={"model": model, "messages": messages, **params}, cast_to=ChatCompletion
    )


def ask_chat(
    client: Any,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    parse: Callable[[str], T],
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    on_request: Callable[[], None] | None = None,
    gate: RateGate | None = None,
    slot: AbstractContextManager | None = None,
) -> T:
    """The parsed answer to ``messages``, within ``policy``'s attempts, or :class:`ChatFailed`.

    ``slot`` (a semaphore shared by the caller's threads) is held while a request is in flight, never
    while waiting to retry, so it bounds the requests in flight, not the pairs being worked on."""
    import openai

    problems: list[str] = []
    waited: float | None = None
    for attempt in range(policy.max_attempts):
        if attempt:
            sleep(policy.delay(attempt, waited))
        waited = None
        if gate is not None:
            gate.wait(sleep)
        try:
            if on_request is not None:
                on_request()
            with slot if slot is not None else nullcontext():
                response = _create(client, model, messages, params)
            answer = (response.choices[0].message.content or "") if response.choices else ""
            return parse(answer)
        except InvalidAnswer as error:
            problems.append(f"invalid:{error.reason}")
        except openai.RateLimitError as error:
            waited = retry_after(error)
            problems.append(f"rate_limited:{waited}")
            if gate is not None and waited:
                gate.hold(waited)
        except (openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError) as error:
            problems.append(type(error).__name__)
        except openai.APIStatusError as error:
            raise ChatFailed(
                f"{model}: HTTP {error.status_code}, not retried", "refused", problems, error.status_code
            ) from error
    kind: Failure = "invalid" if any(p.startswith("invalid:") for p in problems) else "unavailable"
    raise ChatFailed(
        f"{model}: no valid answer in {policy.max_attempts} attempts ({', '.join(problems)})", kind, problems
    )
