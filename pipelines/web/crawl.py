"""The crawl in two steps: a numbered listing (the lead's), then the downloads of one batch at a time
(any worker's).

:class:`Listing` is the stage's input, made in the flow's process (the lead) alone: the posts in the
order the crawl state first recorded them (then any new ones), so batches are cut from it before any
download and a batch's name never depends on which download finished first. :meth:`Crawler.crawl_batch`
runs on whichever worker got the batch: it fetches the batch's answers and images in the crawler's
threads (per-host limits, robots.txt, ``Retry-After`` and byte bounds all apply in the fetcher) and
gives one item per post, in the batch's order: a :class:`CrawledPost` for the pairing stage, a
:class:`~storage.schema.Drop` for a post with nothing to pair, or nothing for a post deferred to the
next run by a transient failure. Beside them it gives each post's :class:`PostOutcome`, which the lead
records in its crawl state: a worker never opens the state.

A deferred post gives nothing, but its batch commits: the runner counts its record as done. The next
run's listing offers it again as a :class:`RetriedPost` (``<record id>#retry<n>``, with the answers
the first attempt loaded), the input of a new batch, until it is crawled or dropped for good; its
samples keep the keys they would have had. What each batch did (posts, downloads, requests per host)
is counted in its own :class:`~ieiw.pipelines.web.tally.Tally`, whichever threads did the work.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.pipelines.web.downloader import ImageDownloader
from ieiw.pipelines.web.fetcher import FetchError
from ieiw.pipelines.web.hosts import link_problem, urls_in_text
from ieiw.pipelines.web.posts import EditCandidate, PostSource, WebPost
from ieiw.pipelines.web.state import CrawlState, DownloadRecord
from ieiw.pipelines.web.tally import Tally, carry, count, counting
from ieiw.storage import fs
from ieiw.storage.schema import Drop, Provenance, Task, stable_key

log = logging.getLogger(__name__)
NSFW_FLAIRS = ("nsfw", "18+")
LICENSE = (
    "images are the copyright of the post and comment authors named in provenance.extra; "
    "collected for research, honour removal requests"
)


@dataclass
class CrawledPost:
    """A post whose original (and, if it downloaded, whose edits) were fetched into the cache."""

    post: WebPost
    original: DownloadRecord
    edits: list[tuple[EditCandidate, DownloadRecord]] = field(default_factory=list)

    @property
    def record_id(self) -> str:
        return self.post.record_id


RETRY = "#retry"


@dataclass(frozen=True)
class RetriedPost:
    """A post deferred (a transient failure) in a batch that committed, offered again: attempt ``n``."""

    post: WebPost
    attempt: int

    @property
    def record_id(self) -> str:
        return f"{self.post.record_id}{RETRY}{self.attempt}"


ListedPost = WebPost | RetriedPost


def post_provenance(post: WebPost) -> Provenance:
    return Provenance(dataset=post.dataset, image_id=post.post_id, url=post.permalink, license=LICENSE)


def post_drop(post: WebPost, reason: str, detail: str = "") -> Drop:
    return Drop(
        key=stable_key("web_edits", post.record_id),
        reason=reason,
        detail=detail[:500],
        record_id=post.record_id,
        task=str(Task.WEB_EDIT),
        provenance=post_provenance(post),
    )


def post_links(post: WebPost) -> list[str]:
    """The links of a post besides its original: more gallery images, links in the title and body."""
    found = [*post.extra_original_urls, *urls_in_text(f"{post.title}\n{post.body}")]
    return [u for u in dict.fromkeys(found) if u != post.original_url]


def post_link_drops(post: WebPost) -> list[Drop]:
    """One row per link of the request that is not its original: the manifest accounts for every link.

    They are never fetched (the request's other images and links are not edits), so each is a drop
    ``post_link_not_used`` whose detail names the link and what it is.
    """
    drops = []
    for index, url in enumerate(post_links(post)):
        what = link_problem(url) or "image_link"
        drops.append(
            Drop(
                key=stable_key("web_edits", post.record_id, "link", url),
                reason="post_link_not_used",
                detail=f"{url[:400]} ({what})",
                record_id=post.record_id,
                task=str(Task.WEB_EDIT),
                provenance=Provenance(
                    dataset=post.dataset,
                    image_id=post.post_id,
                    region_id=f"post~{index}",
                    url=post.permalink,
                    license=LICENSE,
                    extra={"link": url[:2000], "link_kind": what},
                ),
            )
        )
    return drops


def not_fetched(candidate: EditCandidate) -> DownloadRecord:
    """The outcome of a link that is not fetched (``candidate.problem`` says why)."""
    return DownloadRecord(url=candidate.url, ok=False, reason=candidate.problem, detail="not fetched")


def candidate_drops(post: WebPost, because: str) -> list[Drop]:
    """Rows for the answers of a post dropped as a whole (``because``): each link with its own reason
    when it is not an image link, else ``edit_not_fetched``."""
    drops = []
    for candidate in post.candidates or []:
        reason = f"edit_{candidate.problem}" if candidate.problem else "edit_not_fetched"
        drops.append(
            Drop(
                key=stable_key("web_edits", post.record_id, "candidate", candidate.candidate_id),
                reason=reason,
                detail=f"{candidate.url[:400]} (post dropped: {because})",
                record_id=post.record_id,
                task=str(Task.WEB_EDIT),
                provenance=Provenance(
                    dataset=post.dataset,
                    image_id=post.post_id,
                    region_id=candidate.candidate_id,
                    url=post.permalink,
                    license=LICENSE,
                    extra={"edit_author": candidate.author, "edit_url": candidate.url[:2000]},
                ),
            )
        )
    return drops


@dataclass
class PostOutcome:
    """What became of one post in a batch, for the lead's crawl state: ``crawled``, ``dropped`` (and
    why) or ``deferred`` (a transient failure: offered again by the next run); the post with its answers
    once they were loaded, and the downloads it used."""

    post: WebPost
    status: str
    reason: str | None = None
    downloads: list[DownloadRecord] = field(default_factory=list)
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "post": self.post.to_json(),
            "status": self.status,
            "reason": self.reason,
            "downloads": [asdict(d) for d in self.downloads],
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PostOutcome:
        return cls(
            post=WebPost.from_json(data["post"]),
            status=str(data["status"]),
            reason=data.get("reason"),
            downloads=[DownloadRecord.from_json(d) for d in data.get("downloads") or []],
            at=float(data.get("at") or 0.0),
        )


def write_outcomes(folder: str, batch: str, outcomes: list[PostOutcome]) -> str:
    """A batch's post outcomes as one file on the store (``<folder>/<batch>.json``), for the lead."""
    url = fs.join(folder, f"{batch}.json")
    fs.write_bytes_atomic(url, json.dumps([o.to_json() for o in outcomes]).encode("utf-8"))
    return url


def read_outcomes(folder: str) -> Iterator[tuple[str, list[PostOutcome]]]:
    """Every batch's reported outcomes not recorded yet: (its file, its outcomes)."""
    for url in fs.list_files(folder, ".json"):
        try:
            data = json.loads(fs.read_bytes(url))
        except FileNotFoundError:
            continue
        yield url, [PostOutcome.from_json(item) for item in data]


@dataclass
class CrawledBatch:
    """A batch's items in its order (crawled posts and drops) and each post's outcome."""

    items: list[CrawledPost | Drop]
    outcomes: list[PostOutcome]


class Listing:
    """The stage's input, in the lead's process: every post once, in the order first recorded."""

    def __init__(self, source: PostSource, state: CrawlState, config: WebEditsConfig) -> None:
        self.source = source
        self.state = state
        self.config = config
        self._listed = Tally()  # what the listing saw, and its requests

    @property
    def counts(self) -> Counter:
        """What the listing saw: posts seen, listed before, already done, retried; its requests."""
        return self._listed.counts

    def posts(self, done: Iterable[str] = (), listed: Iterable[str] = ()) -> Iterator[ListedPost]:
        """Every post once, numbered: the recorded listing first, then what the source lists anew.

        Each new post is recorded in the state before it is yielded, so a rerun yields the same
        posts in the same order (up to ``max_posts``) and the batches cut from it are the same.
        ``done``: record ids committed before (yielded too, only counted), ``listed``: record ids the
        stage has listed in a batch. A done post the state holds as deferred is yielded as its next
        :class:`RetriedPost` instead (or the one listed and not committed yet). A post whose answers an
        earlier batch loaded comes with them, so they are not asked for again.
        """
        done, listed = set(done), set(listed)
        deferred = self.state.post_ids("deferred") if done else set()
        limit = self.config.max_posts
        seen: set[str] = set()

        def take(post: WebPost) -> ListedPost:
            seen.add(post.record_id)
            self._listed.add("posts_seen")
            stored = self.state.post(post.record_id)
            if stored is not None and stored[0].candidates is not None:
                post = stored[0]
            if post.record_id not in done:
                return post
            self._listed.add("posts_already_done")
            attempt = 1
            while RetriedPost(post, attempt).record_id in done:
                attempt += 1
            retry = RetriedPost(post, attempt)
            if post.record_id in deferred or retry.record_id in listed:
                self._listed.add("posts_retried")
                return retry
            return post

        for post in self.state.listed():
            if limit is not None and len(seen) >= limit:
                return
            self._listed.add("posts_listed_before")
            yield take(post)
        if limit is not None and len(seen) >= limit:
            return
        posts = iter(self.source.iter_posts())
        while True:
            with counting(self._listed):  # the listing's requests
                post = next(posts, None)
            if post is None:
                return
            if post.record_id in seen:
                continue
            self.state.record_listed(post)
            yield take(post)
            if limit is not None and len(seen) >= limit:
                return


class Crawler:
    """Crawls batches of listed posts in shared threads (on any worker; it keeps no state of its own)."""

    def __init__(self, source: PostSource, downloader: ImageDownloader, config: WebEditsConfig) -> None:
        self.source = source
        self.downloader = downloader
        self.config = config
        # one pool for every batch in flight: ``workers`` posts crawl at once, whatever the batches
        self._pool = ThreadPoolExecutor(max(1, config.download.workers), thread_name_prefix="crawl")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def crawl_batch(self, posts: list[ListedPost], run: str = "") -> CrawledBatch:
        """Crawl ``posts`` concurrently; their results in the batch's order, none for a deferred post.

        A post gives a :class:`CrawledPost` (to pair), or its drop with one row per answer link; every
        post that is not deferred also gives a row per other link of its request. What the batch did is
        counted in the calling thread's current tally. ``run``: the stage run's token (a transient
        failure met in this run is not retried again by it, on any worker).
        """
        plain = [p.post if isinstance(p, RetriedPost) else p for p in posts]
        futures = [self._pool.submit(carry(self._crawl_one), post, run) for post in plain]
        items: list[CrawledPost | Drop] = []
        outcomes: list[PostOutcome] = []
        for future in futures:
            crawled, outcome = future.result()
            items.extend(crawled)
            outcomes.append(outcome)
        return CrawledBatch(items, outcomes)

    def _crawl_one(self, post: WebPost, run: str) -> tuple[list[CrawledPost | Drop], PostOutcome]:
        early = self._early_drop(post)
        if early is not None:
            count("posts_dropped_early")
            return [early, *post_link_drops(post)], PostOutcome(post, "dropped", early.reason)
        crawl = self._crawl_post(post, run)
        outcome, result = crawl.outcome, crawl.result
        post = outcome.post
        if result is None:  # deferred: nothing of it is committed this run
            count(f"posts_deferred_{outcome.reason}")
            return [], outcome
        if isinstance(result, Drop):
            count("posts_dropped")
            return [result, *candidate_drops(post, result.reason), *post_link_drops(post)], outcome
        count("posts_crawled")
        return [result, *post_link_drops(post)], outcome

    def _early_drop(self, post: WebPost) -> Drop | None:
        """Posts dropped before any download: removed, over 18, NSFW flair, no image."""
        if post.removed:
            return post_drop(post, "post_removed")
        if self.config.drop_over_18 and post.over_18:
            return post_drop(post, "over_18")
        if self.config.drop_nsfw_flair and post.flair and any(f in post.flair.lower() for f in NSFW_FLAIRS):
            return post_drop(post, "nsfw_flair", post.flair)
        if not post.original_url:
            return post_drop(post, "no_original_image")
        return None

    def _crawl_post(self, post: WebPost, run: str) -> _Crawl:
        """Answers (unless the listing brought them), original, then edits of one post, in a worker
        thread; a transient failure defers the post (when the config says so)."""
        defer = self.config.defer_transient_posts
        if post.candidates is None:
            try:
                post = self.source.load_candidates(post)
            except FetchError as error:
                reason = f"comments_{error.reason}"
                if error.transient and defer:
                    return _Crawl(PostOutcome(post, "deferred", reason))
                return _Crawl(PostOutcome(post, "dropped", reason), post_drop(post, reason, error.detail))
            except (KeyError, TypeError, ValueError, AttributeError) as error:  # a tree of the wrong shape
                post.candidates = None
                outcome = PostOutcome(post, "dropped", "comments_bad_tree")
                return _Crawl(outcome, post_drop(post, "comments_bad_tree", repr(error)))
        if not any(c.problem is None for c in post.candidates or []):
            return _Crawl(PostOutcome(post, "dropped", "no_edits"), post_drop(post, "no_edits"))
        original = self.downloader.download(str(post.original_url), run)
        if not original.ok and original.transient and defer:
            return _Crawl(PostOutcome(post, "deferred", f"original_{original.reason}", [original]))
        if not original.ok:
            reason = f"original_{original.reason}"
            drop = post_drop(post, reason, f"{original.url}: {original.detail}")
            return _Crawl(PostOutcome(post, "dropped", reason, [original]), drop)
        download = self.downloader.download
        edits = [(c, not_fetched(c) if c.problem else download(c.url, run)) for c in post.candidates or []]
        used = [original, *(record for c, record in edits if not c.problem)]
        return _Crawl(PostOutcome(post, "crawled", None, used), CrawledPost(post, original, edits))


@dataclass
class _Crawl:
    """A post's outcome, and what the batch gives for it (None: deferred)."""

    outcome: PostOutcome
    result: CrawledPost | Drop | None = None
