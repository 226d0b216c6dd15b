"""The safe, polite HTTP fetcher every request of the crawler goes through.

Only http(s); every host (and every redirect hop) resolved and vetted by :class:`AddressPolicy`;
robots.txt per origin, read by ``protego`` (RFC 9309: wildcards, ``$``, the longest match wins);
per-host concurrency and rate (a request holds its host's slot until its body's last byte); bounded
retries with exponential backoff that honours ``Retry-After``;
connect/read timeouts, a total deadline and a byte cap while streaming.
Failures raise :class:`FetchError` with a short reason slug.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from protego import Protego

from ieiw.pipelines.web.addresses import (
    ALLOWED_SCHEMES,
    DEFAULT_PORTS,
    AddressPolicy,
    BlockedAddress,
    DNSFailure,
)
from ieiw.pipelines.web.config import DownloadConfig
from ieiw.pipelines.web.limits import HostLimiter, HostLimits, limit_host
from ieiw.pipelines.web.session import make_session
from ieiw.pipelines.web.tally import count

log = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
RETRY_AFTER_STATUSES = (429, 503)
TRANSIENT_REASONS = frozenset(
    {
        "timeout",
        "connection_error",
        "deadline_exceeded",
        "http_429",
        "http_500",
        "http_502",
        "http_503",
        "http_504",
        "robots_unavailable",
        "dns_failure",
    }
)
ROBOTS_MAX_BYTES = 512 * 1024


class FetchError(Exception):
    """A request that did not give a usable body; ``reason`` is a short slug for counts."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT_REASONS


@dataclass
class _Answer:
    """The final response of one request: its status and headers, and its body when it is to be used."""

    status: int
    headers: Any
    body: bytes | None = None


@dataclass
class Fetched:
    url: str  # the final URL, after redirects
    status: int
    content_type: str
    body: bytes
    attempts: int


def host_key(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class SafeFetcher:
    """Fetches URLs under the crawler's safety and politeness rules; thread-safe, one per process."""

    def __init__(
        self,
        config: DownloadConfig,
        session: requests.Session | None = None,
        limits: HostLimits | None = None,
    ) -> None:
        self.config = config
        self.policy = AddressPolicy(config.allow_private_addresses, config.allowed_origins)
        pool = max(config.per_host_concurrency, 4) * 2
        self.session = session or make_session(self.policy, config.user_agent, pool_maxsize=pool)
        # this process's limiter unless one is given (one shared by every process of a build)
        self.limits: HostLimits = limits or HostLimiter(
            config.per_host_concurrency, config.per_host_requests_per_second
        )
        self.robots = RobotsCache(self)
        self.requests_made: Counter = Counter()  # by host: what this fetcher actually sent
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self.session.close()
        self.limits.close()

    # -- public API ---------------------------------------------------------------------------------

    def get(
        self,
        url: str,
        max_bytes: int | None = None,
        headers: dict[str, str] | None = None,
        check_robots: bool = True,
    ) -> Fetched:
        """GET ``url`` following redirects by hand, each hop vetted; returns the final 2xx body."""
        return self._request("GET", url, max_bytes, headers, None, check_robots)

    def get_json(self, url: str, headers: dict[str, str] | None = None) -> Any:
        fetched = self.get(url, self.config.max_json_bytes, headers)
        try:
            return json.loads(fetched.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FetchError("bad_json", f"{url}: {error}") from error

    def post_form(self, url: str, data: dict[str, str], auth: tuple[str, str] | None = None) -> Any:
        """POST a form and parse the JSON answer (the OAuth token request); never follows redirects."""
        fetched = self._request(
            "POST",
            url,
            self.config.max_json_bytes,
            None,
            {"data": data, "auth": auth},
            check_robots=False,
            follow=False,
        )
        try:
            return json.loads(fetched.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FetchError("bad_json", f"{url}: {error}") from error

    def check_url(self, url: str) -> tuple[str, int]:
        """Scheme and address checks for one URL; returns (host, port) or raises FetchError."""
        try:
            parts = urlsplit(url)
        except ValueError as error:
            raise FetchError("bad_url", f"{url[:200]}: {error}") from error
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            raise FetchError("unsupported_scheme", f"{parts.scheme or 'no'} scheme in {url[:200]}")
        if not parts.hostname:
            raise FetchError("bad_url", url[:200])
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError as error:
            raise FetchError("bad_url", f"{url[:200]}: {error}") from error
        try:
            self.policy.vetted_addresses(parts.hostname, port, scheme)
        except BlockedAddress as error:
            raise FetchError("blocked_address", str(error)) from error
        except DNSFailure as error:
            raise FetchError("dns_failure", str(error)) from error
        return parts.hostname, port

    # -- internals ----------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        max_bytes: int | None,
        headers: dict[str, str] | None,
        extra: dict[str, Any] | None,
        check_robots: bool,
        follow: bool = True,
    ) -> Fetched:
        max_bytes = max_bytes or self.config.max_bytes
        visited: list[str] = []
        attempts = 0
        while True:
            self.check_url(url)
            if check_robots and self.config.respect_robots:
                self.robots.check(url)
            visited.append(url)
            answer, tries = self._with_retries(method, url, headers, extra, max_bytes)
            attempts += tries
            if follow and answer.status in REDIRECTS:
                location = answer.headers.get("Location")
                if not location:
                    raise FetchError("bad_redirect", f"{answer.status} without Location from {url}")
                target = urljoin(url, location)
                if target in visited:
                    raise FetchError("redirect_loop", " -> ".join([*visited, target])[:500])
                if len(visited) > self.config.max_redirects:
                    raise FetchError(
                        "too_many_redirects", f"more than {self.config.max_redirects} from {visited[0]}"
                    )
                if host_key(target) != host_key(url):  # credentials never follow a redirect to another host
                    headers = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
                    extra = {k: v for k, v in (extra or {}).items() if k != "auth"}
                if answer.status == 303:
                    method, extra = "GET", {k: v for k, v in (extra or {}).items() if k != "data"}
                url = target
                continue
            if answer.body is None:
                raise FetchError(f"http_{answer.status}", url)
            return Fetched(
                url=url,
                status=answer.status,
                attempts=attempts,
                body=answer.body,
                content_type=answer.headers.get("Content-Type", ""),
            )

    def _with_retries(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        extra: dict[str, Any] | None,
        max_bytes: int,
    ) -> tuple[_Answer, int]:
        """One request, retrying 429/5xx and timeouts with backoff; the final answer, with its body when
        it is one to use. Each attempt holds its host's slot from the request to the body's last byte;
        backoffs wait outside it."""
        host = host_key(url)
        limited = limit_host(url)
        cfg = self.config
        for attempt in range(cfg.max_retries + 1):
            last = attempt == cfg.max_retries
            try:
                with self.limits.slot(limited):
                    self._count(host)
                    response = self.session.request(
                        method,
                        url,
                        headers=headers,
                        stream=True,
                        allow_redirects=False,
                        timeout=(cfg.connect_timeout, cfg.read_timeout),
                        **(extra or {}),
                    )
                    status = response.status_code
                    answer = _Answer(status, response.headers)
                    retry = (status in RETRY_AFTER_STATUSES or status >= 500) and not last
                    if not retry and status < 400 and status not in REDIRECTS:
                        answer.body = self._read_body(response, url, max_bytes)
                    else:
                        response.close()
            except BlockedAddress as error:
                raise FetchError("blocked_address", str(error)) from error
            except DNSFailure as error:
                raise FetchError("dns_failure", str(error)) from error
            except requests.Timeout as error:
                if last:
                    raise FetchError("timeout", f"{url}: {error}") from error
                self._sleep(self._backoff(attempt))
                continue
            except requests.ConnectionError as error:
                if last:
                    raise FetchError("connection_error", f"{url}: {error}") from error
                self._sleep(self._backoff(attempt))
                continue
            except requests.RequestException as error:
                raise FetchError("request_error", f"{url}: {error}") from error
            if not retry:
                return answer, attempt + 1
            wait = self._backoff(attempt)
            retry_after = parse_retry_after(answer.headers.get("Retry-After"))
            if status in RETRY_AFTER_STATUSES and retry_after is not None:
                if retry_after > cfg.max_retry_after_seconds:
                    raise FetchError("retry_after_too_long", f"{url}: Retry-After {retry_after:.0f}s")
                wait = retry_after
                self.limits.defer(limited, retry_after)
            self._sleep(wait)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _read_body(self, response: requests.Response, url: str, max_bytes: int) -> bytes:
        """Stream the body under the byte cap and the total deadline (a slow drip cannot hold us)."""
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            response.close()
            raise FetchError("body_too_large", f"{url}: Content-Length {declared} > {max_bytes}")
        deadline = time.monotonic() + self.config.deadline_seconds
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = response.raw.read1(64 * 1024, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("body_too_large", f"{url}: more than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(
                        "deadline_exceeded", f"{url}: body not done in {self.config.deadline_seconds}s"
                    )
                chunks.append(chunk)
        except requests.Timeout as error:
            raise FetchError("timeout", f"{url}: {error}") from error
        except (OSError, requests.RequestException, _urllib3_errors()) as error:
            if "timed out" in str(error).lower():
                raise FetchError("timeout", f"{url}: {error}") from error
            raise FetchError("connection_error", f"{url}: {error}") from error
        finally:
            response.close()
        return b"".join(chunks)

    def _backoff(self, attempt: int) -> float:
        base = self.config.backoff_seconds * (2**attempt)
        return min(self.config.max_backoff_seconds, base * (0.5 + random.random()))

    def _sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    def _count(self, host: str) -> None:
        with self._count_lock:
            self.requests_made[host] += 1
        count(f"requests/{host}")


def _urllib3_errors() -> type[Exception]:
    from urllib3.exceptions import HTTPError

    return HTTPError


class RobotsCache:
    """robots.txt per origin, fetched once through the same safe fetcher and kept for the run.

    Parsed by ``protego`` as RFC 9309 says: ``*`` and ``$`` in paths, the most specific (longest)
    matching rule decides, ``Allow`` wins a tie; the standard library's parser knows neither.
    """

    def __init__(self, fetcher: SafeFetcher) -> None:
        self._fetcher = fetcher
        self._rules: dict[str, Protego | str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def check(self, url: str) -> None:
        """Raise FetchError (robots_disallowed, robots_unavailable) unless robots.txt allows ``url``."""
        key = host_key(url)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._rules:
                self._rules[key] = self._load(key)
        rules = self._rules[key]
        if rules == "allow":
            return
        if rules == "unavailable":
            raise FetchError("robots_unavailable", f"robots.txt of {key} could not be read")
        if rules == "deny" or not rules.can_fetch(url, self._fetcher.config.user_agent):
            raise FetchError("robots_disallowed", url)

    def _load(self, key: str) -> Protego | str:
        """A parser, or "allow" (no robots.txt), "deny" (401/403) or "unavailable" (5xx, timeouts)."""
        robots_url = key + "/robots.txt"
        try:
            fetched = self._fetcher.get(robots_url, ROBOTS_MAX_BYTES, check_robots=False)
        except FetchError as error:
            if error.reason in ("http_401", "http_403"):
                return "deny"
            if error.reason.startswith("http_4"):
                return "allow"
            log.warning(
                "robots.txt of %s unavailable (%s): not crawling that host this run", key, error.reason
            )
            return "unavailable"
        parser = Protego.parse(fetched.body.decode("utf-8", errors="replace"))
        delay = parser.crawl_delay(self._fetcher.config.user_agent)
        if delay:
            self._fetcher.limits.slow_down(limit_host(key), float(delay))
        return parser
