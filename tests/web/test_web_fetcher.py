"""The safe fetcher and downloader against a misbehaving server on 127.0.0.1."""

from __future__ import annotations

import pytest
import requests
from web_fixture_server import FixtureServer
from web_scenarios import FAULT_REASONS, fault_site

from ieiw.pipelines.web.addresses import AddressPolicy, BlockedAddress
from ieiw.pipelines.web.config import DownloadConfig
from ieiw.pipelines.web.downloader import ImageDownloader
from ieiw.pipelines.web.fetcher import FetchError, SafeFetcher, parse_retry_after
from ieiw.pipelines.web.images import ImageCache
from ieiw.pipelines.web.state import CrawlState


def _config(tmp_path, origin: str | None = None, **overrides) -> DownloadConfig:
    """Download settings for the tests; ``origin``: the one fixture server the crawler may reach."""
    values = dict(
        connect_timeout=1.0,
        read_timeout=0.5,
        deadline_seconds=1.5,
        max_retries=1,
        backoff_seconds=0.05,
        max_bytes=5 * 1024 * 1024,
        per_host_requests_per_second=0,
        allowed_origins=[origin] if origin else [],
        cache_dir=str(tmp_path / "cache"),
    )
    values.update(overrides)
    return DownloadConfig(**values)


@pytest.fixture(scope="module")
def server():
    with FixtureServer(fault_site()) as running:
        yield running


def test_every_misbehaviour_fails_with_its_reason_and_is_recorded(server, tmp_path):
    fetcher = SafeFetcher(_config(tmp_path, server.base))
    state = CrawlState(str(tmp_path / "state.sqlite"))
    downloader = ImageDownloader(fetcher, state, ImageCache(str(tmp_path / "cache")), fetcher.config)
    for path, reason in FAULT_REASONS.items():
        record = downloader.download(server.base + path)
        assert not record.ok and f"edit_{record.reason}" == reason, (path, record)
        assert (
            state.download(server.base + path).reason == record.reason
        )  # in the state file, with its reason
    # a good image with a wrong Content-Type is kept (the bytes decode); a 429 is waited out and retried
    for path in ("/fault/wrong-type.jpg", "/fault/ratelimited.jpg"):
        record = downloader.download(server.base + path)
        assert record.ok and record.width and open(record.path, "rb").read(2) == b"\xff\xd8"
    site = server.site
    assert site.requests_to("/private/edit.jpg") == []  # robots.txt disallows /private/
    assert len(site.requests_to("/robots.txt")) == 1  # fetched once per host, then cached
    assert len(site.requests_to("/fault/error500.jpg")) == 2  # bounded: one try plus max_retries=1
    assert len(site.requests_to("/fault/hang.jpg")) == 2
    first, second = site.requests_to("/fault/ratelimited.jpg")
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.9  # Retry-After: 1 was honoured
    assert fetcher.session.trust_env is False
    assert fetcher.config.user_agent.startswith("ieiw-builder/")


def test_finished_downloads_are_never_fetched_again(server, tmp_path):
    config = _config(tmp_path, server.base)
    state_path = str(tmp_path / "state.sqlite")
    url = server.base + "/img/astronaut.jpg"
    before = len(server.site.requests_to("/img/astronaut.jpg"))
    for _ in range(2):  # two runs: a new fetcher, downloader and state connection each time
        fetcher = SafeFetcher(config)
        state = CrawlState(state_path)
        record = ImageDownloader(fetcher, state, ImageCache(config.cache_dir), config).download(url)
        assert record.ok
        state.close()
    assert len(server.site.requests_to("/img/astronaut.jpg")) == before + 1
    # a permanent failure is final too: the truncated JPEG is not asked again on a rerun
    fetcher = SafeFetcher(config)
    state = CrawlState(state_path)
    downloader = ImageDownloader(fetcher, state, ImageCache(config.cache_dir), config)
    asked = len(server.site.requests_to("/fault/truncated.jpg"))
    assert downloader.download(server.base + "/fault/truncated.jpg").reason == "truncated_image"
    fetcher2 = SafeFetcher(config)
    again = ImageDownloader(fetcher2, state, ImageCache(config.cache_dir), config)
    assert again.download(server.base + "/fault/truncated.jpg").reason == "truncated_image"
    assert len(server.site.requests_to("/fault/truncated.jpg")) == asked + 1


def test_loopback_is_refused_when_private_addresses_are_not_allowed(server, tmp_path):
    fetcher = SafeFetcher(_config(tmp_path))
    before = len(server.site.log)
    with pytest.raises(FetchError) as refused:
        fetcher.get(server.base + "/img/astronaut.jpg")
    assert refused.value.reason == "blocked_address"
    # the connection itself re-checks the address it connects to, so bypassing check_url does not help
    with pytest.raises(BlockedAddress):
        fetcher.session.get(server.base + "/img/astronaut.jpg", timeout=2)
    with pytest.raises(BlockedAddress):
        fetcher.session.get(server.base.replace("127.0.0.1", "localhost") + "/img/astronaut.jpg", timeout=2)
    assert len(server.site.log) == before  # nothing reached the server, not even robots.txt


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x.jpg", "file:///etc/passwd", "gopher://x/", "data:image/png,AA"]
)
def test_only_http_and_https(url, tmp_path):
    with pytest.raises(FetchError) as refused:
        SafeFetcher(_config(tmp_path)).get(url)
    assert refused.value.reason == "unsupported_scheme"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "224.0.0.1",
        "0.0.0.0",
        "240.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "100.64.0.1",
    ],
)
def test_non_public_addresses_are_refused(address):
    with pytest.raises(BlockedAddress):
        AddressPolicy().vetted_addresses(address, 80)


def test_public_addresses_pass_and_flags_open_the_gate():
    assert AddressPolicy().vetted_addresses("93.184.216.34", 80)
    assert AddressPolicy(allowed_origins=["http://127.0.0.1:80"]).vetted_addresses("127.0.0.1", 80, "http")
    assert AddressPolicy(allow_private=True).vetted_addresses("10.0.0.1", 80)


def test_retry_after_parsing():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_too_long_retry_after_fails_instead_of_waiting(server, tmp_path):
    fetcher = SafeFetcher(_config(tmp_path, server.base, max_retry_after_seconds=0.5))
    path = "/r/PhotoshopRequest/comments/busy1/request.json"
    server.site.hits.pop(path, None)
    with pytest.raises(FetchError) as failed:
        fetcher.get(server.base + path)
    assert failed.value.reason == "retry_after_too_long"


def test_the_session_is_not_fooled_by_a_plain_requests_call(server):
    # sanity: without our adapter the fixture server answers, so the refusals above come from the policy
    assert requests.get(server.base + "/robots.txt", timeout=2).status_code == 200
