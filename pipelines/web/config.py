"""Settings of the web-edits generator: source, downloader, pairing (pydantic, YAML-friendly)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ieiw.pipelines.web.addresses import Origin
from ieiw.storage.config import input_file, limit, operational, output

DEFAULT_USER_AGENT = (
    "ieiw-builder/0.1 (research dataset crawler; +https://github.com/ieiw-builder/ieiw-builder)"
)


class DownloadConfig(BaseModel):
    """How every HTTP request is made: safety bounds, politeness and retries."""

    model_config = ConfigDict(extra="forbid")
    # Which downloaded images are accepted (max_bytes, max_pixels, min_side) shapes which pairs exist;
    # every other field says how safely, politely and quickly the crawl runs.

    user_agent: str = operational(DEFAULT_USER_AGENT)
    connect_timeout: float = operational(5.0)
    read_timeout: float = operational(15.0)
    deadline_seconds: float = operational(60.0)  # total time for one response, headers to last byte
    max_bytes: int = 50 * 1024 * 1024  # a body larger than this is refused while streaming
    max_json_bytes: int = operational(20 * 1024 * 1024)
    max_pixels: int = 40_000_000  # larger declared images count as decompression bombs
    min_side: int = 64  # smaller images are thumbnails or icons, not photos to edit
    max_redirects: int = operational(5)
    max_retries: int = operational(3)  # further attempts after the first, for 429/5xx and timeouts
    backoff_seconds: float = operational(1.0)  # first backoff; doubles per attempt, with jitter
    max_backoff_seconds: float = operational(60.0)
    max_retry_after_seconds: float = operational(120.0)  # a longer Retry-After fails the item
    per_host_concurrency: int = operational(4)
    per_host_requests_per_second: float = operational(2.0)  # 0 means unlimited
    workers: int = operational(16)  # threads crawling posts in parallel (within the host limits)
    # Where the per-host limits hold: "build" for every process and machine of the build (the Prefect
    # server's global limits), "process" for this process's threads only, "auto" for "build" when the
    # batches run on Dask and "process" when they all run in the flow's process.
    limits: Literal["auto", "build", "process"] = operational("auto")
    respect_robots: bool = operational(True)
    # Exact origins (scheme://host:port) exempted from the public-address check: a test server or an
    # internal mirror. Only that scheme, host (as written) and port: not other names of its address.
    allowed_origins: list[str] = operational(default_factory=list)
    # Turns the address check off for every private network: a debugging switch, never the way to
    # reach one server (allow its origin instead).
    allow_private_addresses: bool = operational(False)
    # content-addressed downloads: a folder or fsspec URL every worker reaches; by default the stage's
    # own (<stage>/crawl/images)
    cache_dir: str | None = output(None)
    # a rerun retries timeouts and 5xx; permanent failures stay final
    retry_failed_transient: bool = operational(True)

    @model_validator(mode="before")
    @classmethod
    def _no_networks(cls, data: Any) -> Any:
        if isinstance(data, dict) and "allowed_networks" in data:
            raise ValueError(
                "download.allowed_networks was replaced by download.allowed_origins: list each server "
                "the crawler may reach on a private address as scheme://host:port"
            )
        return data

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return [str(Origin.parse(v)) for v in value]


class RedditSourceConfig(BaseModel):
    """Reddit's public JSON listings (or the OAuth API when credentials are in the environment)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reddit"] = "reddit"
    subreddits: list[str] = Field(default_factory=lambda: ["PhotoshopRequest"])
    sort: Literal["new", "hot", "top"] = "new"
    time_filter: Literal["hour", "day", "week", "month", "year", "all"] = "all"  # for sort=top
    max_pages: int = limit(10)  # listing pages of up to 100 posts each, per subreddit
    page_size: int = operational(100)
    base_url: str = operational("https://www.reddit.com")
    oauth_base_url: str = operational("https://oauth.reddit.com")
    token_url: str = operational("https://www.reddit.com/api/v1/access_token")
    client_id_env: str = operational("REDDIT_CLIENT_ID")
    client_secret_env: str = operational("REDDIT_CLIENT_SECRET")


class DumpSourceConfig(BaseModel):
    """Offline Reddit archives: zstandard-compressed newline-delimited JSON of submissions and comments."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reddit_dump"] = "reddit_dump"
    submissions: list[str] = input_file()
    comments: list[str] = input_file()
    subreddits: list[str] = Field(default_factory=lambda: ["PhotoshopRequest"])
    index_dir: str | None = output(None)  # where the comment index (SQLite) is built; default: a temp folder


class PairingConfig(BaseModel):
    """Which edits become pairs: same-scene thresholds, size bounds and the choice among edits."""

    model_config = ConfigDict(extra="forbid")

    ssim_min: float = 0.5  # SSIM of 128x128 grayscale versions at or above this: same scene
    orb_inliers_min: int = 40  # or: this many RANSAC-consistent ORB matches...
    orb_inlier_fraction_min: float = 0.5  # ...making up at least this share of the good matches
    identical_max_change: float = 1.0  # mean absolute difference below this: the edit changed nothing
    max_aspect_change: float = 0.12  # relative aspect-ratio change allowed between original and edit
    max_side: int = 1024  # images are downscaled to this longest side
    max_edits_per_post: int = 1
    similarity_weight: float = 2.0  # rank = log1p(comment score) + weight * same-scene similarity


class WebEditsConfig(BaseModel):
    """The web-edits generator: where posts come from, how they are fetched, which pairs are kept."""

    model_config = ConfigDict(extra="forbid")

    source: RedditSourceConfig | DumpSourceConfig = Field(discriminator="kind")
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    state_path: str | None = output(None)  # SQLite crawl state; default <output>/web_edits/crawl_state.sqlite
    drop_over_18: bool = True
    drop_nsfw_flair: bool = True
    skip_authors: list[str] = Field(default_factory=lambda: ["AutoModerator", "[deleted]"])
    defer_transient_posts: bool = operational(True)  # a post hitting a timeout or 5xx is retried next run
    max_posts: int | None = limit(None)  # the first posts of the (recorded) listing
    # consecutive posts of the listing per batch: downloaded, paired, committed
    batch_size: int = operational(32)

    @model_validator(mode="before")
    @classmethod
    def _no_posts_in_flight(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_posts_in_flight" in data:
            raise ValueError(
                "web_edits.max_posts_in_flight was removed: posts crawl inside their batch, so at most "
                "batch_size x runner.max_in_flight are in flight (download.workers at once)"
            )
        return data
