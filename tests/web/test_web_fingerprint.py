"""What the web_edits stage's fingerprint holds (what shapes the pairs, never operational knobs), and
one web-edit key pinned for good."""

from __future__ import annotations

import pytest
import zstandard
from web_images import edits, jpeg_bytes, photo

from ieiw.pipelines.web.config import (
    DownloadConfig,
    DumpSourceConfig,
    PairingConfig,
    RedditSourceConfig,
    WebEditsConfig,
)
from ieiw.pipelines.web.crawl import CrawledPost
from ieiw.pipelines.web.images import ImageCache
from ieiw.pipelines.web.pairing import generator_info, pair_key, web_edits_stage
from ieiw.pipelines.web.posts import EditCandidate, WebPost
from ieiw.pipelines.web.stage import WebEditsStage
from ieiw.pipelines.web.state import DownloadRecord
from ieiw.storage.config import Role, WorkerEnv, role_of
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.schema import Sample

SET, OP, LIM, FILE, OUT = Role.SETTING, Role.OPERATIONAL, Role.LIMIT, Role.INPUT_FILE, Role.OUTPUT
# What every field of every web config is. Settings shape which pairs exist (fingerprinted); how
# politely, fast or safely the crawl runs is operational; dumps are input files (by content); limits
# bound the listing. A new field fails this test until someone decides which it is.
ROLES = {
    DownloadConfig: {
        "user_agent": OP,
        "connect_timeout": OP,
        "read_timeout": OP,
        "deadline_seconds": OP,
        "max_bytes": SET,  # a larger image is refused: no pair
        "max_json_bytes": OP,
        "max_pixels": SET,  # a larger image counts as a decompression bomb: no pair
        "min_side": SET,  # a smaller image is a thumbnail: no pair
        "max_redirects": OP,
        "max_retries": OP,
        "backoff_seconds": OP,
        "max_backoff_seconds": OP,
        "max_retry_after_seconds": OP,
        "per_host_concurrency": OP,
        "per_host_requests_per_second": OP,
        "workers": OP,
        "limits": OP,  # where the per-host limits hold: the build's processes, or this one
        "respect_robots": OP,
        "allowed_origins": OP,
        "allow_private_addresses": OP,
        "cache_dir": OUT,
        "retry_failed_transient": OP,
    },
    RedditSourceConfig: {
        "kind": SET,
        "subreddits": SET,
        "sort": SET,
        "time_filter": SET,
        "max_pages": LIM,
        "page_size": OP,
        "base_url": OP,
        "oauth_base_url": OP,
        "token_url": OP,
        "client_id_env": OP,
        "client_secret_env": OP,
    },
    DumpSourceConfig: {
        "kind": SET,
        "submissions": FILE,
        "comments": FILE,
        "subreddits": SET,
        "index_dir": OUT,
    },
    PairingConfig: {
        "ssim_min": SET,
        "orb_inliers_min": SET,
        "orb_inlier_fraction_min": SET,
        "identical_max_change": SET,
        "max_aspect_change": SET,
        "max_side": SET,
        "max_edits_per_post": SET,
        "similarity_weight": SET,
    },
    WebEditsConfig: {
        "source": SET,
        "download": SET,
        "pairing": SET,
        "state_path": OUT,
        "drop_over_18": SET,
        "drop_nsfw_flair": SET,
        "skip_authors": SET,
        "defer_transient_posts": OP,
        "max_posts": LIM,
        "batch_size": OP,
    },
}


@pytest.mark.parametrize("model", list(ROLES), ids=lambda m: m.__name__)
def test_every_field_declares_its_role_or_is_a_setting_on_purpose(model):
    assert set(ROLES[model]) == set(model.model_fields), "a field was added or removed: decide its role"
    assert {name: role_of(model, name) for name in model.model_fields} == ROLES[model]


def web_fingerprint(config: WebEditsConfig) -> Fingerprint:
    return WebEditsStage(config, "/nowhere/web_edits").fingerprint(WorkerEnv())


def _config(**changes) -> WebEditsConfig:
    raw = {"source": {"kind": "reddit"}}
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return WebEditsConfig.model_validate(raw)


@pytest.mark.parametrize(
    "dotted,value",
    [
        ("download.per_host_requests_per_second", 50.0),
        ("download.per_host_concurrency", 32),
        ("download.workers", 64),
        ("download.limits", "build"),
        ("download.read_timeout", 2.0),
        ("download.max_retries", 0),
        ("download.user_agent", "other/1.0"),
        ("download.allowed_origins", ["http://127.0.0.1:8080"]),
        ("download.cache_dir", "/elsewhere/cache"),
        ("source.base_url", "http://127.0.0.1:8080"),
        ("source.client_secret_env", "MY_SECRET"),
        ("source.page_size", 25),
        ("state_path", "/tmp/state.sqlite"),
        ("batch_size", 7),
        ("max_posts", 100),
    ],
)
def test_operational_knobs_leave_the_fingerprint_alone(dotted, value):
    assert web_fingerprint(_config(**{dotted: value})).digest == web_fingerprint(_config()).digest


@pytest.mark.parametrize(
    "dotted,value",
    [
        ("pairing.ssim_min", 0.6),
        ("pairing.max_edits_per_post", 2),
        ("pairing.max_side", 512),
        ("source.subreddits", ["PhotoshopRequest", "picrequests"]),
        ("source.sort", "top"),
        ("skip_authors", ["AutoModerator"]),
        ("drop_over_18", False),
        ("download.min_side", 128),
        ("download.max_pixels", 1_000_000),
    ],
)
def test_what_shapes_the_pairs_changes_the_fingerprint_and_is_named(dotted, value):
    before, after = web_fingerprint(_config()), web_fingerprint(_config(**{dotted: value}))
    assert after.digest != before.digest
    assert any(line.startswith(f"web_edits.{dotted}") for line in after.changes(before)), after.changes(
        before
    )
    assert after.settings["instruction"] == "cleaned"


def test_dumps_enter_by_content_not_by_path(tmp_path):
    def dump(folder, text: bytes) -> str:
        path = tmp_path / folder / "RS.zst"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress(text))
        return str(path)

    def fingerprint(submissions: str) -> str:
        source = {"kind": "reddit_dump", "submissions": [submissions], "comments": [], "index_dir": "/x"}
        return web_fingerprint(WebEditsConfig.model_validate({"source": source})).digest

    same_a, same_b = dump("a", b'{"id": "1"}\n'), dump("b", b'{"id": "1"}\n')
    assert fingerprint(same_a) == fingerprint(same_b)  # moved or copied: the same input
    assert fingerprint(dump("c", b'{"id": "2"}\n')) != fingerprint(same_a)


# The key of one web-edit sample, pinned: post r/PhotoshopRequest abc123, comment def456, default
# pairing, cleaned instructions. It changes only when something that shapes the sample changes.
GOLDEN_KEY = "728790ab8612a79a788f7256"


def _post() -> WebPost:
    return WebPost(
        post_id="abc123",
        dataset="reddit:r/PhotoshopRequest",
        title="Can someone please make it black and white?",
        body="",
        original_url="https://i.redd.it/original.jpg",
        permalink="https://www.reddit.com/r/PhotoshopRequest/comments/abc123/bw/",
        author="requester",
        score=12,
    )


def test_golden_web_edit_key(tmp_path):
    assert pair_key(_post(), "def456", generator_info(PairingConfig())) == GOLDEN_KEY
    # and the stage makes that key from real images, wherever the cache puts them
    cache = ImageCache(str(tmp_path / "somewhere" / "cache"))
    original = photo("coffee")

    def cached(image, url):
        sha, path = cache.put(jpeg_bytes(image), "JPEG")
        return DownloadRecord(url=url, ok=True, sha256=sha, path=path, width=320, height=320)

    edit = EditCandidate("def456", "https://i.redd.it/edit.jpg", "editor", score=30)
    crawled = CrawledPost(
        _post(),
        cached(original, "https://i.redd.it/original.jpg"),
        [(edit, cached(edits(original)["black_and_white"], edit.url))],
    )
    samples = [r for r in web_edits_stage([crawled], PairingConfig()) if isinstance(r, Sample)]
    assert [s.key for s in samples] == [GOLDEN_KEY]
    assert samples[0].meta.generator.settings["instruction"] == "cleaned"
