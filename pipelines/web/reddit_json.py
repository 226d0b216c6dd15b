"""Reddit live: the public JSON listings and comment trees, or the OAuth API when credentials are set.

Credentials come from the environment (``REDDIT_CLIENT_ID`` / ``REDDIT_CLIENT_SECRET`` by default,
names configurable) and are never logged. With them, requests go to ``oauth.reddit.com`` with a
bearer token from the client-credentials grant; without them, to the public ``.json`` endpoints.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode, urlsplit

from ieiw.pipelines.web.config import RedditSourceConfig
from ieiw.pipelines.web.fetcher import FetchError, SafeFetcher
from ieiw.pipelines.web.posts import PostSource, WebPost
from ieiw.pipelines.web.reddit_things import candidates_from_comments, post_from_submission

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A source that cannot list anything (blocked, unreachable, refused credentials)."""


class OAuthToken:
    """A client-credentials bearer token, fetched when first needed and renewed before it expires."""

    def __init__(self, fetcher: SafeFetcher, token_url: str, client_id: str, client_secret: str) -> None:
        self._fetcher = fetcher
        self._token_url = token_url
        self._credentials = (client_id, client_secret)
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires - 60:
                answer = self._fetcher.post_form(
                    self._token_url, {"grant_type": "client_credentials"}, auth=self._credentials
                )
                if not isinstance(answer, dict) or "access_token" not in answer:
                    raise SourceError("the OAuth token endpoint did not return an access_token")
                self._token = str(answer["access_token"])
                self._expires = time.monotonic() + float(answer.get("expires_in", 3600))
            return {"Authorization": f"bearer {self._token}"}

    def __repr__(self) -> str:  # never show the secret or the token
        return "OAuthToken(<redacted>)"


class RedditSource(PostSource):
    """Posts of the configured subreddits, newest (or hot/top) first, page by page."""

    name = "reddit"

    def __init__(self, config: RedditSourceConfig, fetcher: SafeFetcher, skip_authors: list[str]) -> None:
        self.config = config
        self.fetcher = fetcher
        self.skip_authors = skip_authors
        client_id = os.environ.get(config.client_id_env)
        client_secret = os.environ.get(config.client_secret_env)
        self.token = (
            OAuthToken(fetcher, config.token_url, client_id, client_secret)
            if client_id and client_secret
            else None
        )
        self.base_url = (config.oauth_base_url if self.token else config.base_url).rstrip("/")

    @property
    def authenticated(self) -> bool:
        return self.token is not None

    def _get_json(self, url: str) -> Any:
        headers = self.token.header() if self.token else None
        return self.fetcher.get_json(url, headers=headers)

    def listing_url(self, subreddit: str, after: str | None) -> str:
        query = {"limit": self.config.page_size, "raw_json": 1}
        if self.config.sort == "top":
            query["t"] = self.config.time_filter
        if after:
            query["after"] = after
        suffix = "" if self.token else ".json"
        return f"{self.base_url}/r/{subreddit}/{self.config.sort}{suffix}?{urlencode(query)}"

    def iter_posts(self) -> Iterator[WebPost]:
        for subreddit in self.config.subreddits:
            yield from self._subreddit_posts(subreddit)

    def _subreddit_posts(self, subreddit: str) -> Iterator[WebPost]:
        after: str | None = None
        for page in range(self.config.max_pages):
            url = self.listing_url(subreddit, after)
            try:
                listing = self._get_json(url)
            except FetchError as error:
                if page == 0:
                    raise SourceError(
                        f"cannot list r/{subreddit} ({error.reason}: {error.detail}); "
                        "configure OAuth credentials or use the dump source"
                    ) from error
                log.warning(
                    "r/%s: listing page %d failed (%s); stopping this subreddit",
                    subreddit,
                    page,
                    error.reason,
                )
                return
            data = (listing or {}).get("data") or {}
            for child in data.get("children") or []:
                if child.get("kind") == "t3" and child.get("data", {}).get("id"):
                    yield post_from_submission(child["data"])
            after = data.get("after")
            if not after:
                return

    def comments_url(self, post: WebPost) -> str:
        path = urlsplit(post.permalink).path.rstrip("/") or f"/comments/{post.post_id}"
        suffix = "" if self.token else ".json"
        # depth 3: answers, the requester's replies to them, and edits answering those (follow-up edits)
        query = urlencode({"raw_json": 1, "sort": "top", "depth": 3, "limit": 500})
        return f"{self.base_url}{path}{suffix}?{query}"

    def load_candidates(self, post: WebPost) -> WebPost:
        """Fetch the post's comment tree; top-level comments with images become the candidates."""
        if post.candidates is not None:
            return post
        tree = self._get_json(self.comments_url(post))
        if not isinstance(tree, list) or len(tree) < 2:
            raise FetchError("bad_comment_tree", f"expected [post, comments] listings for {post.post_id}")
        children = ((tree[1] or {}).get("data") or {}).get("children") or []
        top_level = [c["data"] for c in children if c.get("kind") == "t1" and isinstance(c.get("data"), dict)]
        post.candidates = candidates_from_comments(top_level, post.author, self.skip_authors)
        return post
