"""The safe fetcher and downloader against a misbehaving server on 127.0.0.1."""

from __future__ import annotations

import ipaddress

import pytest
import requests
from web_fixture_server import ROBOTS, FixtureServer
from web_scenarios import FAULT_REASONS, fault_site

from ieiw.pipelines.web.addresses import AddressPolicy, BlockedAddress, embedded_ipv4
from ieiw.pipelines.web.config import DownloadConfig
from ieiw.pipelines.web.downloader import DownloadRecords, ImageDownloader
from ieiw.pipelines.web.fetcher import FetchError, SafeFetcher, parse_retry_after
from ieiw.pipelines.web.images import ImageCache


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
    records = DownloadRecords(str(tmp_path / "downloads"))
    downloader = ImageDownloader(fetcher, records, ImageCache(str(tmp_path / "cache")), fetcher.config)
    for path, reason in FAULT_REASONS.items():
        record = downloader.download(server.base + path)
        assert not record.ok and f"edit_{record.reason}" == reason, (path, record)
        assert records.get(server.base + path).reason == record.reason  # recorded, with its reason
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
    records_root = str(tmp_path / "downloads")
    url = server.base + "/img/astronaut.jpg"
    before = len(server.site.requests_to("/img/astronaut.jpg"))
    for _ in range(2):  # two runs (or two workers): a new fetcher, downloader and records each time
        fetcher = SafeFetcher(config)
        records = DownloadRecords(records_root)
        record = ImageDownloader(fetcher, records, ImageCache(config.cache_dir), config).download(url)
        assert record.ok
        fetcher.close()
    assert len(server.site.requests_to("/img/astronaut.jpg")) == before + 1
    # a permanent failure is final too: the truncated JPEG is not asked again on a rerun
    fetcher = SafeFetcher(config)
    downloader = ImageDownloader(fetcher, DownloadRecords(records_root), ImageCache(config.cache_dir), config)
    asked = len(server.site.requests_to("/fault/truncated.jpg"))
    assert downloader.download(server.base + "/fault/truncated.jpg").reason == "truncated_image"
    fetcher2 = SafeFetcher(config)
    again = ImageDownloader(fetcher2, DownloadRecords(records_root), ImageCache(config.cache_dir), config)
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


# -- exact origins, not networks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "http://localhost:{port}",  # another name of the same server
        "http://127.1:{port}",  # short, hexadecimal and decimal spellings of 127.0.0.1
        "http://0x7f000001:{port}",
        "http://2130706433:{port}",
        "http://[::ffff:127.0.0.1]:{port}",
        "http://[::1]:{port}",
        "https://127.0.0.1:{port}",  # the same host and port with another scheme
    ],
)
def test_an_allowed_origin_is_that_server_only(server, tmp_path, spelling):
    fetcher = SafeFetcher(_config(tmp_path, server.base))
    assert fetcher.get(server.base + "/img/astronaut.jpg").status == 200  # the allowed origin itself
    before = len(server.site.log)
    url = spelling.format(port=server.base.rsplit(":", 1)[1]) + "/img/astronaut.jpg"
    with pytest.raises(FetchError) as refused:
        fetcher.get(url)
    assert refused.value.reason == "blocked_address", refused.value
    with pytest.raises(BlockedAddress):  # and the connection itself refuses, whatever asks for it
        fetcher.session.get(url, timeout=2)
    assert len(server.site.log) == before


def test_an_allowed_origin_does_not_allow_another_port(server, tmp_path):
    with FixtureServer(fault_site()) as other:
        fetcher = SafeFetcher(_config(tmp_path, server.base))
        with pytest.raises(FetchError) as refused:
            fetcher.get(other.base + "/img/astronaut.jpg")
        assert refused.value.reason == "blocked_address"
        assert other.site.log == []
        assert SafeFetcher(_config(tmp_path, other.base)).get(other.base + "/img/astronaut.jpg").status == 200


@pytest.mark.parametrize(
    "path", ["/fault/to-localhost.jpg", "/fault/to-6to4.jpg", "/fault/to-nat64.jpg", "/fault/to-private.jpg"]
)
def test_a_redirect_from_the_allowed_origin_to_another_name_is_refused(server, tmp_path, path):
    asked = len(server.site.requests_to("/img/astronaut.jpg"))
    with pytest.raises(FetchError) as refused:
        SafeFetcher(_config(tmp_path, server.base)).get(server.base + path)
    assert refused.value.reason == "blocked_address", refused.value
    assert len(server.site.requests_to("/img/astronaut.jpg")) == asked  # the target was never asked


@pytest.mark.parametrize(
    "origin,expected",
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("HTTP://LocalHost:8080/", "http://localhost:8080"),
        ("http://[0:0::1]:9", "http://[::1]:9"),
        ("https://mirror.internal", "https://mirror.internal:443"),
    ],
)
def test_origins_are_normalised(origin, expected):
    assert DownloadConfig(allowed_origins=[origin]).allowed_origins == [expected]


@pytest.mark.parametrize(
    "bad",
    ["127.0.0.1:8080", "ftp://127.0.0.1:21", "http://127.0.0.1:8080/img", "http://u:p@host:80", "http://"],
)
def test_an_origin_is_scheme_host_port_only(bad):
    with pytest.raises(ValueError):
        DownloadConfig(allowed_origins=[bad])


def test_the_network_allowance_is_gone_with_a_clear_message():
    with pytest.raises(ValueError, match="allowed_origins"):
        DownloadConfig.model_validate({"allowed_networks": ["127.0.0.1/32"]})


def test_the_policy_matches_host_as_written_scheme_and_port():
    policy = AddressPolicy(allowed_origins=["http://127.0.0.1:8080"])
    assert policy.vetted_addresses("127.0.0.1", 8080, "http")
    for host, port, scheme in [
        ("127.0.0.1", 8081, "http"),
        ("127.0.0.1", 8080, "https"),
        ("127.0.0.1", 8080, None),  # a caller that does not say the scheme gets no exemption
        ("localhost", 8080, "http"),
        ("127.1", 8080, "http"),
        ("2130706433", 8080, "http"),
        ("0x7f000001", 8080, "http"),
    ]:
        with pytest.raises(BlockedAddress):
            policy.vetted_addresses(host, port, scheme)


# -- IPv4 inside IPv6 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2002:a9fe:a9fe::",  # 6to4 of 169.254.169.254
        "2002:c0a8:101:1::1",  # 6to4 of 192.168.1.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b::c0a8:101",  # NAT64 of 192.168.1.1
        "::ffff:10.0.0.1",
    ],
)
def test_embedded_private_ipv4_is_refused(address):
    with pytest.raises(BlockedAddress):
        AddressPolicy().vetted_addresses(address, 80)


@pytest.mark.parametrize(
    "address,inner",
    [("2002:5db8:d822::1", "93.184.216.34"), ("64:ff9b::5db8:d822", "93.184.216.34")],
)
def test_embedded_public_ipv4_is_checked_as_that_ipv4(address, inner):
    assert str(embedded_ipv4(ipaddress.ip_address(address))) == inner
    assert AddressPolicy().vetted_addresses(address, 80)


# -- robots.txt by RFC 9309 ---------------------------------------------------------------------------


def test_robots_txt_longest_match_and_wildcards(server, tmp_path):
    """The fixture's robots.txt: Disallow /private/, Allow /private/shared/, Disallow /*/hidden-*.jpg$."""
    fetcher = SafeFetcher(_config(tmp_path, server.base))
    assert fetcher.get(server.base + "/private/shared/edit.jpg").status == 200  # the longer Allow wins
    for path in ("/private/edit.jpg", "/img/hidden-edit.jpg", "/fault/hidden-x.jpg"):
        with pytest.raises(FetchError) as refused:
            fetcher.get(server.base + path)
        assert refused.value.reason == "robots_disallowed", path
        assert server.site.requests_to(path) == []
    assert fetcher.get(server.base + "/img/hidden-edit.jpg?size=2").status == 200  # "$" anchors the end
    # what the standard library's parser would have said: the first match, and no wildcards
    from urllib.robotparser import RobotFileParser

    stdlib = RobotFileParser()
    stdlib.parse(ROBOTS.splitlines())
    assert not stdlib.can_fetch("*", server.base + "/private/shared/edit.jpg")
    assert stdlib.can_fetch("*", server.base + "/img/hidden-edit.jpg")
