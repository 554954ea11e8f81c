"""Crawl downloads on a cluster: pending URLs sharded by host over long-lived workers.

Each host (scheme, host, port: what the downloader keeps politeness state by) belongs to one worker
for the whole run (:meth:`curation.engine.Executor.keyed`), so per-host connection limits, request
rates, Retry-After pauses and robots.txt hold across the cluster. Workers fetch, validate and put
into the image store (opened on the worker from its URL, with the node's own credentials); the driver
records the outcomes (workers never open the catalog).

Kill -9: before its puts, a worker journals the batch's keys through :class:`BatchJournals`, which
lives beside the driver and writes ``<data>/.staging/store-<catalog id>.b<first job id>.journal`` on
the driver's disk (a retried batch appends to the same journal). The page barrier of the crawl (a page
finished before the next is read) means no batch is in flight once a page's outcomes are committed:
the driver then drops the batch journals. A rerun's recovery reads every journal of the catalog and
deletes what they list that the catalog does not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from curation import options
from curation.config import Settings
from curation.crawl.config import CrawlOptions
from curation.crawl.fetching import check, fetch_bytes
from curation.crawl.jobs import Accepted, Job, Outcome, group_page
from curation.crawl.writer import OutcomeWriter
from curation.crawl.writes import BatchJournals, put
from curation.engine import Executor, Task
from curation.netguard import AddressGuard
from curation.store import ImageStore, StorageOptions, open_store

# URLs per cluster batch: about a second of work for a worker's threads at 50 ms a fetch, so the
# scheduling cost (~1 ms a batch) stays under 1 %.
CLUSTER_BATCH = 64


def host_key(job: Job) -> str:
    """What the downloader keeps politeness state by: scheme, host and port."""
    parts = urlsplit(job.url)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port}"


class FetchTask(Task):
    """Fetch, validate and store a batch of jobs on a worker; one outcome each. As in the local loop,
    ``threads`` fetch, ``[crawl] check_threads`` others validate, and as many as fetch (at most
    ``upload_threads``) put, so decoding an image never holds a connection's thread."""

    def __init__(self, settings: Settings, store: ImageStore, retry_seconds: float, journals: Any) -> None:
        from curation.downloader import FetchConfig

        config = options.resolve(CrawlOptions, settings)
        self.min_side, self.max_pixels, self.max_bytes = config.min_side, config.max_pixels, config.max_bytes
        self.check_threads, self.upload_threads = max(1, config.check_threads), max(1, config.upload_threads)
        self.fetch_config = FetchConfig.from_settings(settings.section("crawl"))
        self.store_url, self.retry_seconds = store.url, retry_seconds  # the URL only: no credentials travel
        self.journals = journals

    def setup(self) -> None:
        from curation.downloader import Downloader

        self.downloader = Downloader(self.fetch_config, AddressGuard(self.fetch_config.allow_private_hosts))
        self.store = open_store(self.store_url, self.retry_seconds)
        self.fetchers = ThreadPoolExecutor(max(1, self.threads), thread_name_prefix="crawl-fetch")
        self.checkers = ThreadPoolExecutor(self.check_threads, thread_name_prefix="crawl-check")
        self.uploaders = ThreadPoolExecutor(
            min(self.upload_threads, max(1, self.threads)), thread_name_prefix="crawl-put"
        )

    def run(self, batch: Sequence[Job]) -> list[Outcome]:
        """Fetch and check the batch, journal its keys beside the driver, then put them."""
        fetched = [self.fetchers.submit(self.fetch, job) for job in batch]
        checked = [
            result if isinstance(result, Outcome) else result.result() for result in (f.result() for f in fetched)
        ]
        accepted = [item for item in checked if isinstance(item, Accepted)]
        if not accepted:
            return checked
        name = f"b{batch[0].id}"
        self.journals.call("begin", name, [item.key for item in accepted])
        puts = {id(item): self.uploaders.submit(put, self.store, item) for item in accepted}
        outcomes = [puts[id(item)].result() if isinstance(item, Accepted) else item for item in checked]
        taken = [item.key for item in accepted if puts[id(item)].result().image is None]
        if taken:  # another object holds the key: not this run's to delete
            self.journals.call("forget", name, taken)
        return outcomes

    def fetch(self, job: Job) -> Outcome | Future[Accepted | Outcome]:
        """The job's outcome when the fetch failed, else the future of its check."""
        fetched = fetch_bytes(job, self.downloader, self.max_bytes)
        if isinstance(fetched, Outcome):
            return fetched
        return self.checkers.submit(check, job, *fetched, self.min_side, self.max_pixels)


class ClusterPipeline:
    """The driver's side: one page of jobs at a time through a keyed pool of :class:`FetchTask`
    workers (one fetch serves every class that found the same URL); outcomes to the writer."""

    def __init__(
        self,
        cluster: Executor,
        settings: Settings,
        store: ImageStore,
        catalog_id: str,
        writer: OutcomeWriter,
        progress: tqdm,
    ) -> None:
        concurrency = max(1, options.resolve(CrawlOptions, settings).concurrency)
        retry_seconds = options.resolve(StorageOptions, settings).retry_seconds
        self.journals = cluster.beside_driver(BatchJournals(settings.data_dir, catalog_id))
        self.pool = cluster.keyed(FetchTask(settings, store, retry_seconds, self.journals), workers=concurrency)
        self.writer, self.progress = writer, progress
        self.same_url: dict[str, list[Job]] = {}

    def run(self, jobs: list[Job], reused: dict[str, tuple[str, str | None]]) -> None:
        """Download one page of jobs to the end, commit, then drop the page's batch journals."""
        self.same_url = group_page(jobs, reused, self.writer, self.progress)
        firsts = [group[0] for group in self.same_url.values()]
        for outcome in self.pool.map(firsts, key=host_key, batch_size=CLUSTER_BATCH):
            self._finish(outcome)
        self.writer.flush()
        self.journals.call("drop")

    def _finish(self, outcome: Outcome) -> None:
        # A batch that ran twice (its node died) gives its outcomes twice: the second finds nothing.
        for job in self.same_url.pop(outcome.job.url, []):
            self.writer.add(replace(outcome, job=job))
            self.progress.update()

    def interrupt(self) -> None:
        """Ctrl-C: start nothing new, record the batches already in flight once they end."""
        for outcome in self.pool.finish():
            self._finish(outcome)

    def close(self) -> None:
        self.pool.close()
