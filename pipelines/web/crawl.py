"""The crawl in two steps: a numbered listing, then the downloads of one batch of it at a time.

:meth:`Crawler.listing` is the stage's input: the posts in the order the crawl state first recorded
them (then any new ones), so batches are cut from it before any download and a batch's name never
depends on which download finished first. :meth:`Crawler.crawl_batch` fetches a batch's answers and
images in the crawler's threads (per-host limits, robots.txt, ``Retry-After`` and byte bounds all
apply in the fetcher) and gives one item per post, in the batch's order: a :class:`CrawledPost` for
the pairing stage, a :class:`~storage.schema.Drop` for a post with nothing to pair, or nothing for a
post deferred to the next run by a transient failure.

A deferred post gives nothing, but its batch commits: the runner counts its record as done. The next
run's listing offers it again as a :class:`RetriedPost` (``<record id>#retry<n>``), the input of a new
batch, until it is crawled or dropped for good; its samples keep the keys they would have had.
What each batch did (posts, downloads, requests per host) is counted in its own
:class:`~ieiw.pipelines.web.tally.Tally`, whichever threads did the work.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.pipelines.web.downloader import ImageDownloader
from ieiw.pipelines.web.fetcher import FetchError
from ieiw.pipelines.web.hosts import link_problem, urls_in_text
from ieiw.pipelines.web.posts import EditCandidate, PostSource, WebPost
from ieiw.pipelines.web.state import CrawlState, DownloadRecord
from ieiw.pipelines.web.tally import Tally, carry, count, counting
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


class Crawler:
    """Lists posts once, in a recorded order, and crawls them one batch at a time in shared threads."""

    def __init__(
        self, source: PostSource, downloader: ImageDownloader, state: CrawlState, config: WebEditsConfig
    ) -> None:
        self.source = source
        self.downloader = downloader
        self.state = state
        self.config = config
        self._listed = Tally()  # what the listing saw (in the process that lists: the stage's lead)
        # one pool for every batch in flight: ``workers`` posts crawl at once, whatever the batches
        self._pool = ThreadPoolExecutor(max(1, config.download.workers), thread_name_prefix="crawl")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    @property
    def counts(self) -> Counter:
        """What the listing saw: posts seen, listed before, already done, retried; its requests."""
        return self._listed.counts

    # -- the input ----------------------------------------------------------------------------------

    def listing(self, done: Iterable[str] = (), listed: Iterable[str] = ()) -> Iterator[ListedPost]:
        """Every post once, numbered: the recorded listing first, then what the source lists anew.

        Each new post is recorded in the state before it is yielded, so a rerun yields the same
        posts in the same order (up to ``max_posts``) and the batches cut from it are the same.
        ``done``: record ids committed before (yielded too, only counted), ``listed``: record ids the
        stage has listed in a batch. A done post the state holds as deferred is yielded as its next
        :class:`RetriedPost` instead (or the one listed and not committed yet).
        """
        done, listed = set(done), set(listed)
        deferred = self.state.post_ids("deferred") if done else set()
        limit = self.config.max_posts
        seen: set[str] = set()

        def take(post: WebPost) -> ListedPost:
            seen.add(post.record_id)
            self._listed.add("posts_seen")
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

    # -- one batch ----------------------------------------------------------------------------------

    def crawl_batch(self, posts: list[ListedPost]) -> list[CrawledPost | Drop]:
        """Crawl ``posts`` concurrently; their results in the batch's order, none for a deferred post.

        A post gives a :class:`CrawledPost` (to pair), or its drop with one row per answer link; every
        post that is not deferred also gives a row per other link of its request. What the batch did is
        counted in the calling thread's current tally.
        """
        plain = [p.post if isinstance(p, RetriedPost) else p for p in posts]
        futures = [self._pool.submit(carry(self._crawl_one), post) for post in plain]
        results: list[CrawledPost | Drop] = []
        for future in futures:
            results.extend(future.result())
        return results

    def _crawl_one(self, post: WebPost) -> list[CrawledPost | Drop]:
        early = self._early_drop(post)
        if early is not None:
            self.state.record_post(post, "dropped", early.reason)
            count("posts_dropped_early")
            return [early, *post_link_drops(post)]
        post, outcome = self._crawl_post(post)
        if outcome is None:  # deferred: nothing of it is committed this run
            return []
        if isinstance(outcome, Drop):
            count("posts_dropped")
            return [outcome, *candidate_drops(post, outcome.reason), *post_link_drops(post)]
        count("posts_crawled")
        return [outcome, *post_link_drops(post)]

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

    def _defer(self, post: WebPost, reason: str) -> None:
        """A transient failure (timeout, 5xx, 429): recorded in the state, not committed, retried next run."""
        self.state.record_post(post, "deferred", reason)
        count(f"posts_deferred_{reason}")

    def _crawl_post(self, post: WebPost) -> tuple[WebPost, CrawledPost | Drop | None]:
        """Answers, original, then edits of one post (in a worker thread); each outcome goes to the state.

        Returns the post (with its answers once loaded) and its outcome: None when deferred.
        """
        stored = self.state.post(post.record_id)
        if stored is not None and stored[0].candidates is not None:
            post = stored[0]  # the answers were fetched by an earlier run: no second comment-tree request
        else:
            try:
                post = self.source.load_candidates(post)
            except FetchError as error:
                if error.transient and self.config.defer_transient_posts:
                    return post, self._defer(post, f"comments_{error.reason}")
                self.state.record_post(post, "dropped", f"comments_{error.reason}")
                return post, post_drop(post, f"comments_{error.reason}", error.detail)
            except (
                KeyError,
                TypeError,
                ValueError,
                AttributeError,
            ) as error:  # a comment tree of the wrong shape
                post.candidates = None
                self.state.record_post(post, "dropped", "comments_bad_tree")
                return post, post_drop(post, "comments_bad_tree", repr(error))
            self.state.record_post(post, "listed")
        if not any(c.problem is None for c in post.candidates or []):
            self.state.record_post(post, "dropped", "no_edits")
            return post, post_drop(post, "no_edits")
        original = self.downloader.download(str(post.original_url))
        if not original.ok and original.transient and self.config.defer_transient_posts:
            return post, self._defer(post, f"original_{original.reason}")
        if not original.ok:
            self.state.record_post(post, "dropped", f"original_{original.reason}")
            return post, post_drop(post, f"original_{original.reason}", f"{original.url}: {original.detail}")
        download = self.downloader.download
        edits = [(c, not_fetched(c) if c.problem else download(c.url)) for c in post.candidates or []]
        self.state.record_post(post, "crawled")
        return post, CrawledPost(post=post, original=original, edits=edits)
