"""The crawl: list posts, drop the unusable ones early, fetch answers and images in parallel threads.

It yields one item per post: a :class:`CrawledPost` (original and edits downloaded, or failed with
reasons) for the pairing stage, or a :class:`~storage.schema.Drop` for a post with nothing to pair.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.pipelines.web.downloader import ImageDownloader
from ieiw.pipelines.web.fetcher import FetchError
from ieiw.pipelines.web.posts import EditCandidate, PostSource, WebPost
from ieiw.pipelines.web.state import CrawlState, DownloadRecord
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


class Crawler:
    """Crawls posts of a source with bounded threads and bounded posts in flight."""

    def __init__(
        self, source: PostSource, downloader: ImageDownloader, state: CrawlState, config: WebEditsConfig
    ) -> None:
        self.source = source
        self.downloader = downloader
        self.state = state
        self.config = config
        self.counts: Counter = Counter()
        self._counts_lock = threading.Lock()

    def crawl(self, skip: Iterable[str] = ()) -> Iterator[CrawledPost | Drop]:
        """Every post once (``skip``: record ids finished before), as soon as its downloads are done."""
        skip = set(skip)
        seen: set[str] = set()
        limit = self.config.max_posts
        workers = max(1, self.config.download.workers)
        in_flight: set[Future] = set()
        with ThreadPoolExecutor(workers, thread_name_prefix="crawl") as pool:
            for post in self.source.iter_posts():
                if limit is not None and self.counts["posts_seen"] >= limit:
                    break
                if post.record_id in seen:
                    continue
                seen.add(post.record_id)
                self.counts["posts_seen"] += 1
                if post.record_id in skip:
                    self.counts["posts_already_done"] += 1
                    continue
                early = self._early_drop(post)
                if early is not None:
                    self.state.record_post(post, "dropped", early.reason)
                    self.counts["posts_dropped_early"] += 1
                    yield early
                    continue
                in_flight.add(pool.submit(self._crawl_post, post))
                while len(in_flight) >= self.config.max_posts_in_flight:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    yield from _finished(done)
            while in_flight:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                yield from _finished(done)

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
        with self._counts_lock:
            self.counts[f"posts_deferred_{reason}"] += 1

    def _crawl_post(self, post: WebPost) -> CrawledPost | Drop | None:
        """Answers, original, then edits of one post (in a worker thread); each outcome goes to the state."""
        stored = self.state.post(post.record_id)
        if stored is not None and stored[0].candidates is not None:
            post = stored[0]  # the answers were fetched by an earlier run: no second comment-tree request
        else:
            try:
                post = self.source.load_candidates(post)
            except FetchError as error:
                if error.transient and self.config.defer_transient_posts:
                    return self._defer(post, f"comments_{error.reason}")
                self.state.record_post(post, "dropped", f"comments_{error.reason}")
                return post_drop(post, f"comments_{error.reason}", error.detail)
            except (
                KeyError,
                TypeError,
                ValueError,
                AttributeError,
            ) as error:  # a comment tree of the wrong shape
                self.state.record_post(post, "dropped", "comments_bad_tree")
                return post_drop(post, "comments_bad_tree", repr(error))
            self.state.record_post(post, "listed")
        if not post.candidates:
            self.state.record_post(post, "dropped", "no_edits")
            return post_drop(post, "no_edits")
        original = self.downloader.download(str(post.original_url))
        if not original.ok and original.transient and self.config.defer_transient_posts:
            return self._defer(post, f"original_{original.reason}")
        if not original.ok:
            self.state.record_post(post, "dropped", f"original_{original.reason}")
            return post_drop(post, f"original_{original.reason}", f"{original.url}: {original.detail}")
        edits = [(c, self.downloader.download(c.url)) for c in post.candidates]
        self.state.record_post(post, "crawled")
        return CrawledPost(post=post, original=original, edits=edits)


def _finished(done: Iterable[Future]) -> Iterator[CrawledPost | Drop]:
    for future in done:
        result = future.result()
        if result is not None:  # None: deferred to the next run
            yield result
