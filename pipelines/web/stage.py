"""The web-edits generator on the one stage contract: crawl photoshop-request posts, keep same-scene edits.

The input is the crawl's numbered listing (:meth:`~ieiw.pipelines.web.crawl.Crawler.listing`: the posts
in the order the crawl state first recorded them, then new ones), pulled only once the runner holds the
stage, so the state file is opened after a rebuild has wiped the folder, never before. The runner cuts
it into batches and records each before any download, as img2dataset numbers its input shards. A batch
downloads its posts (concurrently, within the per-host limits), pairs them and commits once, so its
name and contents never depend on which download finished first or on a killed run.

The crawl of a process (fetcher, limits, state, threads) is a host model: built once per worker
process and shared by the batches it runs. What each batch did (posts, downloads by outcome, requests
by host) comes back with its samples and is summed into the stage's counts; :meth:`WebEditsStage.finish`
adds what the listing saw and what the state file holds, and closes the crawl of the lead's process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

from ieiw.pipelines.web.build import CrawlSetup, build_crawl
from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.pipelines.web.crawl import ListedPost
from ieiw.pipelines.web.pairing import GENERATOR, crawl_and_pair, instruction_method
from ieiw.pipelines.web.tally import counting
from ieiw.storage import manifest
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.runner import forget_models, loaded_models, worker_model
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage import HOST, ModelSpec, Samples, Stage, model_key
from ieiw.storage.stage_folder import read_listing

CRAWL = "crawl"  # the model role of a process's crawl
_RENEW = threading.Lock()


class WebEditsStage(Stage):
    """Posts of the crawl's listing downloaded and paired, a batch of consecutive posts at a time."""

    name = GENERATOR
    unit = "posts"

    def __init__(self, config: WebEditsConfig, url: str, shards: ShardSpec | None = None) -> None:
        super().__init__(url, config.batch_size, shards)
        self.config = config
        self._state_digest: str | None = None

    def fingerprint(self, env: WorkerEnv) -> Fingerprint:
        """What shapes the pairs (the config's settings, dumps by content) and how instructions are
        written; politeness, speed and safety knobs, paths and limits are not in it."""
        return config_fingerprint(
            self.name, self.config, env, extra={"instruction": instruction_method(None)}
        )

    @property
    def state_digest(self) -> str:
        """The fingerprint the crawl state is bound to (no model, so the same on every worker)."""
        if self._state_digest is None:
            self._state_digest = self.fingerprint(WorkerEnv()).digest
        return self._state_digest

    def models(self) -> Mapping[str, ModelSpec]:
        """This process's crawl of the stage, built on first use."""
        crawl = self.config.model_dump(mode="json", exclude={"batch_size"})
        return {
            CRAWL: ModelSpec(
                model_key("web_crawl", None, self.url, self.state_digest, crawl),
                partial(build_crawl, self.config, self.url, self.state_digest),
                HOST,
            )
        }

    def records(self) -> Iterator[ListedPost]:
        """The listing; a post deferred in a committed batch comes again as its next retry."""
        crawl = self._crawl(None)
        listing = read_listing(self.url)
        committed = manifest.completed_batches(self.url)
        ids = listing.column("record_id").to_pylist()
        batches = listing.column("batch").to_pylist()
        done = {rid for rid, batch in zip(ids, batches, strict=True) if batch in committed}
        yield from crawl.crawler.listing(done=done, listed=ids)

    def run(self, records: list[Any], models: Mapping[str, Any]) -> Samples:
        """One batch of the listing: download its posts, pair them (SSIM and ORB: no model to load)."""
        crawl = self._crawl(models.get(CRAWL))
        with counting() as tally:
            results = crawl_and_pair(records, crawl.crawler, self.config.pairing)
        return Samples(results, dict(sorted(tally.counts.items())))

    def total(self) -> int | None:
        return self.config.max_posts

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        """What the listing saw and the state holds now; closes this process's crawl."""
        spec = self.models()[CRAWL]
        if spec.key not in {key for key, _ in loaded_models("web_crawl")}:
            return {}
        crawl: CrawlSetup = worker_model(spec)
        try:
            return {"crawl": crawl.snapshot()}
        finally:
            forget_models(spec.key)
            crawl.close()

    def _crawl(self, loaded: CrawlSetup | None) -> CrawlSetup:
        """This process's crawl, built again when its state file is gone (a rebuild wiped the folder
        after an earlier run in this process left its crawl open)."""
        spec = self.models()[CRAWL]
        crawl = loaded if loaded is not None else worker_model(spec)
        if crawl.is_current():
            return crawl
        with _RENEW:
            current = worker_model(spec)
            if current is not crawl and current.is_current():
                return current
            forget_models(spec.key)  # the stale crawl closes when its last batch lets go of it
            return worker_model(spec)
