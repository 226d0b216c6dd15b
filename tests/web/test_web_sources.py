"""Source adapters: Reddit's live JSON (public and OAuth), the zstandard dumps, and host resolvers."""

from __future__ import annotations

import json

import pytest
import zstandard
from web_fixture_server import SUBREDDIT, FixtureServer
from web_scenarios import FAULT_PATHS, bulk_site, fault_site

from ieiw.pipelines.web.build import build_lead
from ieiw.pipelines.web.config import DownloadConfig, DumpSourceConfig, RedditSourceConfig, WebEditsConfig
from ieiw.pipelines.web.fetcher import FetchError, SafeFetcher
from ieiw.pipelines.web.hosts import is_probable_image, resolve_image_url, urls_in_text
from ieiw.pipelines.web.reddit_dump import RedditDumpSource
from ieiw.pipelines.web.reddit_json import RedditSource, SourceError
from ieiw.pipelines.web.reddit_things import candidates_from_comments
from ieiw.pipelines.web.state import CrawlState, DownloadRecord

SKIP = ["AutoModerator", "[deleted]"]


def _fetcher(origin: str) -> SafeFetcher:
    return SafeFetcher(
        DownloadConfig(
            allowed_origins=[origin],
            per_host_requests_per_second=0,
            max_retries=1,
            backoff_seconds=0.05,
            read_timeout=2,
        )
    )


def _check_posts(posts: dict, base: str) -> None:
    good = posts["good1"]
    assert good.dataset == f"reddit:r/{SUBREDDIT}" and good.record_id == "reddit:good1"
    assert good.original_url == base + "/img/astronaut.jpg" and good.author == "requester"
    assert [c.candidate_id for c in good.candidates] == ["c1", "c2", "c3"]
    assert good.candidates[0].op_replied and not good.candidates[1].op_replied
    assert good.candidates[1].score == 50 and good.candidates[0].url == base + "/img/a_removed.jpg"
    assert posts["gallery1"].original_url == base + "/img/coffee.jpg?width=320&s=x"  # &amp; unescaped
    assert posts["gallery1"].candidates[0].url == base + "/img/c_caption.jpg"  # uploaded comment image
    assert posts["preview1"].original_url == base + "/img/chelsea.jpg?s=1&a=2"
    assert posts["nsfw1"].over_18 and posts["text1"].original_url is None
    assert [c.author for c in posts["noedits1"].candidates] == []  # the requester and bots are not editors
    assert len(posts["faults1"].candidates) == len(FAULT_PATHS)


def test_reddit_json_listing_pages_and_comment_trees():
    site = fault_site()
    with FixtureServer(site) as server:
        source = RedditSource(
            RedditSourceConfig(base_url=server.base, page_size=4), _fetcher(server.base), SKIP
        )
        assert not source.authenticated
        listed = list(source.iter_posts())
        assert [p.post_id for p in listed] == [p.post_id for p in site.posts]  # 10 posts over 3 pages
        assert len(site.requests_to(f"/r/{SUBREDDIT}/new.json")) == 3
        posts = {p.post_id: source.load_candidates(p) for p in listed if p.post_id != "busy1"}
        _check_posts(posts, server.base)


def _oauth_site(monkeypatch, accepted_secret: str, given_secret: str):
    """The fault site behind OAuth, accepting ``accepted_secret``; the environment gives ``given_secret``."""
    site = fault_site()
    site.client_credentials = ("my-client", accepted_secret)
    site.expect_bearer = "tok-123"
    monkeypatch.setenv("REDDIT_CLIENT_ID", "my-client")
    monkeypatch.setenv("REDDIT_CLIENT_SECRET", given_secret)
    return site


def test_reddit_oauth_credentials_from_the_environment(monkeypatch):
    site = _oauth_site(monkeypatch, "my-secret", "my-secret")
    with FixtureServer(site) as server:
        config = RedditSourceConfig(
            base_url="http://unused.invalid",
            oauth_base_url=server.base,
            token_url=server.base + "/api/v1/access_token",
            page_size=20,
        )
        source = RedditSource(config, _fetcher(server.base), SKIP)
        assert source.authenticated and "my-secret" not in repr(source.token)
        posts = list(source.iter_posts())
        assert len(posts) == len(site.posts)
        assert source.load_candidates(posts[0]).candidates
        assert len(site.requests_to("/api/v1/access_token")) == 1  # one token for every request
        assert site.requests_to(f"/r/{SUBREDDIT}/new")[0].status == 200


def test_reddit_oauth_refused_credentials_fail_clearly(monkeypatch):
    site = _oauth_site(monkeypatch, "right", "wrong")
    with FixtureServer(site) as server:
        config = RedditSourceConfig(
            oauth_base_url=server.base, token_url=server.base + "/api/v1/access_token"
        )
        with pytest.raises(SourceError) as refused:
            list(RedditSource(config, _fetcher(server.base), SKIP).iter_posts())
        assert "http_401" in str(refused.value) and "wrong" not in str(refused.value)


def _write_zst(path, records: list[dict], extra_lines: list[str] = ()) -> None:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(zstandard.ZstdCompressor(level=3, write_content_size=False).compress(data))


def test_zstd_dump_adapter(tmp_path):
    site = fault_site()
    site.base = "https://example.org"
    submissions, comments = site.dump_records()
    other = dict(submissions[0], id="zzz", subreddit="pics")  # another subreddit in a monthly dump
    _write_zst(tmp_path / "RS.zst", [other, *submissions], ["{not json"])
    _write_zst(
        tmp_path / "RC.zst", [dict(comments[0], id="q1", link_id="t3_zzz", subreddit="pics"), *comments]
    )
    config = DumpSourceConfig(
        submissions=[str(tmp_path / "RS.zst")],
        comments=[str(tmp_path / "RC.zst")],
        subreddits=["photoshoprequest"],
        index_dir=str(tmp_path / "index"),
    )
    source = RedditDumpSource(config, SKIP)
    posts = {p.post_id: p for p in source.iter_posts()}
    assert list(posts) == [p.post_id for p in site.posts]
    assert source.counters == {"bad_lines": 1}
    _check_posts(posts, site.base)
    assert not (tmp_path / "index" / "dump_index.sqlite").exists()  # the index is temporary


@pytest.mark.parametrize(
    "url,direct",
    [
        ("https://i.redd.it/abc123.jpg", "https://i.redd.it/abc123.jpg"),
        (
            "https://preview.redd.it/abc123.png?width=640&amp;format=png&amp;s=f00",
            "https://i.redd.it/abc123.png",
        ),
        ("https://www.reddit.com/media?url=https%3A%2F%2Fi.redd.it%2Fxyz.jpeg", "https://i.redd.it/xyz.jpeg"),
        ("https://imgur.com/AbCdE12", "https://i.imgur.com/AbCdE12.jpg"),
        ("https://i.imgur.com/AbCdE12.png", "https://i.imgur.com/AbCdE12.png"),
        ("https://example.org/photos/edit.webp", "https://example.org/photos/edit.webp"),
    ],
)
def test_host_resolvers(url, direct):
    assert resolve_image_url(url) == direct


def test_video_links_and_pages_are_not_candidates():
    with pytest.raises(FetchError):
        resolve_image_url("https://i.imgur.com/AbCdE12.gifv")
    with pytest.raises(FetchError):
        resolve_image_url("https://v.redd.it/abcdef")
    text = "Done! [here](https://i.imgur.com/AbCdE12.png), tutorial: https://example.org/how-to and https://youtu.be/x"
    assert [u for u in urls_in_text(text) if is_probable_image(u)] == ["https://i.imgur.com/AbCdE12.png"]


def test_imgur_album_resolves_to_its_first_image_through_the_fetcher(monkeypatch):
    monkeypatch.delenv("IMGUR_CLIENT_ID", raising=False)
    from ieiw.pipelines.web import hosts

    assert (
        hosts.first_og_image(
            '<meta property="og:image" content="https://i.imgur.com/Xy12345.jpg?fb">',
            "https://imgur.com/a/abc",
        )
        == "https://i.imgur.com/Xy12345.jpg"
    )
    with pytest.raises(FetchError):
        hosts.first_og_image("<html></html>", "https://imgur.com/a/abc")


def test_every_link_of_an_answer_is_a_candidate_with_what_it_is():
    body = (
        "Done [v1](https://i.redd.it/aa.jpg), [v2](http://[::1]:8080/b.png), "
        "file:///etc/passwd ftp://example.org/c.jpg https://example.org/tutorial https://youtu.be/x "
        "https://example.org/short/abc"
    )
    candidates = candidates_from_comments(
        [{"id": "k", "author": "ed", "body": body, "score": 3}], op="requester", skip_authors=SKIP
    )
    assert [(c.candidate_id, c.url, c.problem) for c in candidates] == [
        ("k-0", "https://i.redd.it/aa.jpg", None),  # image ids as before: the comment's images in order
        ("k-1", "http://[::1]:8080/b.png", None),  # fetched, and refused by the address check there
        ("k~0", "file:///etc/passwd", "unsupported_scheme"),
        ("k~1", "ftp://example.org/c.jpg", "unsupported_scheme"),
        ("k~2", "https://example.org/tutorial", "not_an_image_link"),
        ("k~3", "https://youtu.be/x", "not_an_image_link"),
        ("k~4", "https://example.org/short/abc", "not_an_image_link"),
    ]
    one = candidates_from_comments(
        [{"id": "j", "author": "ed", "body": "[x](https://i.redd.it/a.jpg)"}], "op", SKIP
    )
    assert [c.candidate_id for c in one] == ["j"]  # a single image keeps the bare comment id


def test_the_listing_is_numbered_once_and_kept_when_the_live_listing_moves_on(tmp_path):
    site = bulk_site(10)
    site.page_size = 4
    with FixtureServer(site) as server:
        config = WebEditsConfig.model_validate(
            {
                "source": {"kind": "reddit", "base_url": server.base, "page_size": 4},
                "download": {"allowed_origins": [server.base], "per_host_requests_per_second": 0},
                "max_posts": 6,
            }
        )
        lead = build_lead(config, str(tmp_path / "web_edits"), fingerprint="f1")
        first = [p.post_id for p in lead.listing.posts()]
        lead.close()
        assert first == [f"p{i:04d}" for i in range(6)]
        # two new posts arrive at the top of "new", and the old ones have moved down the pages
        newer = bulk_site(12).posts[10:]
        for post, name in zip(newer, ("n1", "n2")):
            post.post_id = name
        site.posts[:0] = newer
        lead = build_lead(config.model_copy(update={"max_posts": None}), str(tmp_path / "web_edits"), "f1")
        again = [p.post_id for p in lead.listing.posts(done={"reddit:p0001"})]
        counts = dict(lead.listing.counts)
        lead.close()
        assert again == first + ["n1", "n2"] + [f"p{i:04d}" for i in range(6, 10)]
        assert counts["posts_listed_before"] == 6 and counts["posts_already_done"] == 1
        # a crawl state made for other settings starts afresh: the new listing order is the input
        lead = build_lead(config, str(tmp_path / "web_edits"), fingerprint="f2")
        assert [p.post_id for p in lead.listing.posts()] == ["n1", "n2", *first[:4]]
        lead.close()


def test_the_crawl_state_is_bound_to_a_fingerprint(tmp_path):
    state = CrawlState(str(tmp_path / "state.sqlite"))
    assert state.bind("a") is False  # a new state
    state.record_download(DownloadRecord(url="https://x/a.jpg", ok=False, reason="image_too_small"))
    assert state.bind("a") is False and state.download("https://x/a.jpg") is not None
    assert state.bind("b") is True and state.download("https://x/a.jpg") is None
    state.close()
