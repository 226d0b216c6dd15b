"""Settings of the web-edits generator: source, downloader, pairing (pydantic, YAML-friendly)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_USER_AGENT = (
    "ieiw-builder/0.1 (research dataset crawler; +https://github.com/ieiw-builder/ieiw-builder)"
)


class DownloadConfig(BaseModel):
    """How every HTTP request is made: safety bounds, politeness and retries."""

    model_config = ConfigDict(extra="forbid")

    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    deadline_seconds: float = 60.0  # total time for one response, headers to last byte
    max_bytes: int = 50 * 1024 * 1024  # a body larger than this is refused while streaming
    max_json_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000  # larger declared images count as decompression bombs
    min_side: int = 64  # smaller images are thumbnails or icons, not photos to edit
    max_redirects: int = 5
    max_retries: int = 3  # further attempts after the first, for 429/5xx and timeouts
    backoff_seconds: float = 1.0  # first backoff; doubles per attempt, with jitter
    max_backoff_seconds: float = 60.0
    max_retry_after_seconds: float = 120.0  # a longer Retry-After fails the item instead of waiting
    per_host_concurrency: int = 4
    per_host_requests_per_second: float = 2.0  # 0 means unlimited
    workers: int = 16  # threads crawling posts in parallel (each host stays within its own limits)
    respect_robots: bool = True
    allow_private_addresses: bool = False  # tests only: lets the crawler reach loopback/private hosts
    allowed_networks: list[str] = Field(default_factory=list)  # CIDRs exempted from the address check
    cache_dir: str = ".ieiw/web_cache"  # content-addressed downloads (local folder)
    retry_failed_transient: bool = True  # a rerun retries timeouts and 5xx; permanent failures stay final


class RedditSourceConfig(BaseModel):
    """Reddit's public JSON listings (or the OAuth API when credentials are in the environment)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reddit"] = "reddit"
    subreddits: list[str] = Field(default_factory=lambda: ["PhotoshopRequest"])
    sort: Literal["new", "hot", "top"] = "new"
    time_filter: Literal["hour", "day", "week", "month", "year", "all"] = "all"  # for sort=top
    max_pages: int = 10  # listing pages of up to 100 posts each, per subreddit
    page_size: int = 100
    base_url: str = "https://www.reddit.com"
    oauth_base_url: str = "https://oauth.reddit.com"
    token_url: str = "https://www.reddit.com/api/v1/access_token"
    client_id_env: str = "REDDIT_CLIENT_ID"
    client_secret_env: str = "REDDIT_CLIENT_SECRET"


class DumpSourceConfig(BaseModel):
    """Offline Reddit archives: zstandard-compressed newline-delimited JSON of submissions and comments."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["reddit_dump"] = "reddit_dump"
    submissions: list[str]
    comments: list[str]
    subreddits: list[str] = Field(default_factory=lambda: ["PhotoshopRequest"])
    index_dir: str | None = None  # where the comment index (SQLite) is built; default: a temp folder


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
    state_path: str | None = None  # SQLite crawl state; default <output>/web_edits/crawl_state.sqlite
    drop_over_18: bool = True
    drop_nsfw_flair: bool = True
    skip_authors: list[str] = Field(default_factory=lambda: ["AutoModerator", "[deleted]"])
    defer_transient_posts: bool = (
        True  # a post whose answers/original hit a timeout or 5xx is retried next run
    )
    max_posts: int | None = None
    batch_size: int = 32
    max_posts_in_flight: int = 64  # posts being crawled at once: bounds memory and open work
