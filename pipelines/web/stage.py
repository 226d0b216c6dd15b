"""The web-edits generator on the one stage contract: crawl photoshop-request posts, keep same-scene edits.

The input is the crawl's numbered listing (:class:`~ieiw.pipelines.web.crawl.Listing`: the posts in the
order the crawl state first recorded them, then new ones), pulled only once the runner holds the stage,
so the state file is opened after a rebuild has wiped the folder, never before. The runner cuts it into
batches and records each before any download, as img2dataset numbers its input shards. A batch
downloads its posts (concurrently, within the per-host limits), pairs them and commits once, so its
name and contents never depend on which download finished first or on a killed run.

Who holds what: the crawl state (SQLite) is the lead's alone, opened in the flow's process for the
listing and for what became of each post. A worker's crawl (fetcher, limiter, threads) is a host model,
built once per worker process; it shares only the download cache and its per-URL records on the build's
store, and reports each post's outcome in a file beside them (``crawl/outcomes/<batch>.json``), which the
lead records in its state (:meth:`WebEditsStage.finish`, or the next run's listing after a kill). So a
worker on another machine needs nothing on the lead's disk.

The per-host limits come from the stage's :class:`~ieiw.pipelines.web.limits.LimitsFactory`: this
process's own by default; ``ieiw.flows.crawl_limits`` hands one that every process of the build shares.
What each batch did (posts, downloads by outcome, requests by host) comes back with its samples and is
summed into the stage's counts; :meth:`WebEditsStage.finish` adds what the listing saw and what the
state holds.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

from ieiw.pipelines.web.build import (
    CrawlLead,
    CrawlWorker,
    build_lead,
    build_worker,
    fetcher_spec,
    source_hosts,
)
from ieiw.pipelines.web.config import WebEditsConfig
from ieiw.pipelines.web.crawl import ListedPost, write_outcomes
from ieiw.pipelines.web.limits import LimitsFactory, ProcessLimits
from ieiw.pipelines.web.pairing import GENERATOR, crawl_and_pair, instruction_method
from ieiw.pipelines.web.tally import counting
from ieiw.storage import manifest
from ieiw.storage.config import WorkerEnv, config_fingerprint
from ieiw.storage.fingerprint import Fingerprint
from ieiw.storage.runner import current_batch, forget_models, loaded_models, worker_model
from ieiw.storage.shards import ShardSpec
from ieiw.storage.stage import HOST, ModelSpec, Samples, Stage, model_key
from ieiw.storage.stage_folder import read_listing

CRAWL = "crawl"  # the model role of a worker process's crawl
LEAD = "web_crawl_lead"  # the kind of the lead's crawl (state and listing), never loaded by a worker
_RENEW = threading.Lock()


class WebEditsStage(Stage):
    """Posts of the crawl's listing downloaded and paired, a batch of consecutive posts at a time."""

    name = GENERATOR
    unit = "posts"

    def __init__(
        self,
        config: WebEditsConfig,
        url: str,
        shards: ShardSpec | None = None,
        limits: LimitsFactory | None = None,
    ) -> None:
        super().__init__(url, config.batch_size, shards)
        self.config = config
        self.limits: LimitsFactory = limits or ProcessLimits()
        self.run_token = ""  # set by the lead's listing for each run; travels to the workers with batches
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

    def _crawl_settings(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json", exclude={"batch_size"})

    def models(self) -> Mapping[str, ModelSpec]:
        """A worker process's crawl of the stage, built on first use."""
        limits = self.limits.describe()
        return {
            CRAWL: ModelSpec(
                model_key("web_crawl", None, self.url, self._crawl_settings(), limits),
                partial(build_worker, self.config, self.url, self.limits),
                HOST,
            )
        }

    def lead_spec(self) -> ModelSpec:
        """The lead's crawl (state file and listing), built once in the flow's process."""
        key = model_key(
            LEAD, None, self.url, self.state_digest, self._crawl_settings(), self.limits.describe()
        )
        return ModelSpec(
            key, partial(build_lead, self.config, self.url, self.state_digest, self.limits), HOST
        )

    def info(self) -> dict[str, Any]:
        return {"crawl_limits": self.limits.describe()}

    def records(self) -> Iterator[ListedPost]:
        """The listing; a post deferred in a committed batch comes again as its next retry."""
        self.run_token = uuid.uuid4().hex
        lead = self._lead()
        lead.record_outcomes()  # what batches of a killed run reported
        self.limits.prepare(self.config.download, source_hosts(self.config))
        listing = read_listing(self.url)
        committed = manifest.completed_batches(self.url)
        ids = listing.column("record_id").to_pylist()
        batches = listing.column("batch").to_pylist()
        done = {rid for rid, batch in zip(ids, batches, strict=True) if batch in committed}
        yield from lead.listing.posts(done=done, listed=ids)

    def run(self, records: list[Any], models: Mapping[str, Any]) -> Samples:
        """One batch of the listing: download its posts, pair them (SSIM and ORB: no model to load), and
        report each post's outcome for the lead."""
        crawl: CrawlWorker = models.get(CRAWL) or worker_model(self.models()[CRAWL])
        with counting() as tally:
            results, outcomes = crawl_and_pair(
                records, crawl.crawler, self.config.pairing, run=self.run_token
            )
        batch = current_batch()
        if batch:
            write_outcomes(crawl.places.outcomes, batch, outcomes)
        return Samples(results, dict(sorted(tally.counts.items())))

    def total(self) -> int | None:
        return self.config.max_posts

    def finish(self, writer: Any, summary: Mapping[str, Any]) -> dict[str, Any]:
        """Records what the batches reported; what the listing saw and the state holds now. Closes this
        process's crawls."""
        spec = self.lead_spec()
        if spec.key not in {key for key, _ in loaded_models(LEAD)}:
            return {}
        lead: CrawlLead = worker_model(spec)
        try:
            lead.record_outcomes()
            return {"crawl": lead.snapshot()}
        finally:
            forget_models(spec.key)
            lead.close()
            self._close_worker()

    def _close_worker(self) -> None:
        """This process's worker crawl (if its batches ran here) and fetcher: closed with the run, so the
        next run in this process reads robots.txt again."""
        loaded = {key for key, _ in loaded_models()}
        for spec in (self.models()[CRAWL], fetcher_spec(self.config.download, self.limits)):
            if spec.key in loaded:
                crawl = worker_model(spec)
                forget_models(spec.key)
                crawl.close()

    def _lead(self) -> CrawlLead:
        """The lead's crawl, built again when its state file is gone (a rebuild wiped the folder after an
        earlier run in this process left its crawl open)."""
        spec = self.lead_spec()
        lead = worker_model(spec)
        if lead.is_current():
            return lead
        with _RENEW:
            current = worker_model(spec)
            if current is not lead and current.is_current():
                return current
            forget_models(spec.key)
            lead.close()
            return worker_model(spec)
