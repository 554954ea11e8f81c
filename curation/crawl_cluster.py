"""Crawl downloads on a cluster: pending URLs sharded by host over long-lived workers.

Each host (scheme, host, port: what the downloader keeps politeness state by) belongs to one worker
for the whole run (:meth:`curation.engine.Executor.keyed`), so per-host connection limits, request
rates, Retry-After pauses and robots.txt hold across the cluster. Workers fetch, validate and store
into the shared data directory; the driver records the outcomes (workers never open the catalog).

Kill -9: a worker journals each file of a batch in ``<data>/.staging/<catalog id>.b<first job
id>.journal`` before the file appears (a retried batch appends to the same journal). The page
barrier of the crawl (a page finished before the next is read) means no batch is in flight once a
page's outcomes are committed: the driver then deletes the catalog's batch journals. A rerun's
:func:`curation.storage.recover` reads every journal of the catalog and removes what it lists
that the catalog does not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from curation import options, storage
from curation.config import Settings
from curation.crawl import (
    CrawlOptions,
    _check_and_store,
    _fetch_bytes,
    _Job,
    _Outcome,
    _OutcomeWriter,
    group_page,
)
from curation.engine import Executor, Task
from curation.netguard import AddressGuard

# URLs per cluster batch: about a second of work for a worker's threads at 50 ms a fetch, so the
# scheduling cost (~1 ms a batch) stays under 1 %.
CLUSTER_BATCH = 64


def host_key(job: _Job) -> str:
    """What the downloader keeps politeness state by: scheme, host and port."""
    parts = urlsplit(job.url)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{parts.port}"


class FetchTask(Task):
    """Fetch, validate and store a batch of jobs on a worker; one outcome each. As in the local loop,
    ``threads`` fetch and ``[crawl] check_threads`` others validate and store, so decoding an image
    never holds a connection's thread."""

    def __init__(self, settings: Settings, catalog_id: str) -> None:
        from curation.downloader import FetchConfig

        config = options.resolve(CrawlOptions, settings)
        self.min_side, self.max_pixels, self.max_bytes = config.min_side, config.max_pixels, config.max_bytes
        self.check_threads = max(1, config.check_threads)
        self.fetch_config = FetchConfig.from_settings(settings.section("crawl"))
        self.data_dir = Path(settings.data_dir).absolute()  # a worker's working directory is not ours
        self.catalog_id = catalog_id

    def setup(self) -> None:
        from curation.downloader import Downloader

        self.downloader = Downloader(self.fetch_config, AddressGuard(self.fetch_config.allow_private_hosts))
        self.fetchers = ThreadPoolExecutor(max(1, self.threads), thread_name_prefix="crawl-fetch")
        self.checkers = ThreadPoolExecutor(self.check_threads, thread_name_prefix="crawl-check")

    def run(self, batch: Sequence[_Job]) -> list[_Outcome]:
        journal = storage.WriteJournal(self.data_dir, f"{self.catalog_id}.b{batch[0].id}")
        try:
            fetches = [self.fetchers.submit(self.fetch, job, journal) for job in batch]
            done = [fetch.result() for fetch in fetches]
            return [outcome if isinstance(outcome, _Outcome) else outcome.result() for outcome in done]
        finally:
            journal.close()

    def fetch(self, job: _Job, journal: storage.WriteJournal) -> _Outcome | Future[_Outcome]:
        """The job's outcome when the fetch failed, else the future of its check."""
        fetched = _fetch_bytes(job, self.downloader, self.max_bytes)
        if isinstance(fetched, _Outcome):
            return fetched
        args = (self.min_side, self.max_pixels, self.data_dir, journal)
        return self.checkers.submit(_check_and_store, job, *fetched, *args)


class ClusterPipeline:
    """The driver's side: one page of jobs at a time through a keyed pool of :class:`FetchTask`
    workers (one fetch serves every class that found the same URL); outcomes to the writer."""

    def __init__(
        self, cluster: Executor, settings: Settings, catalog_id: str, writer: _OutcomeWriter, progress: tqdm
    ) -> None:
        concurrency = max(1, options.resolve(CrawlOptions, settings).concurrency)
        self.pool = cluster.keyed(FetchTask(settings, catalog_id), workers=concurrency)
        self.staging = Path(settings.data_dir) / storage.STAGING
        self.catalog_id = catalog_id
        self.writer, self.progress = writer, progress
        self.same_url: dict[str, list[_Job]] = {}

    def run(self, jobs: list[_Job], reused: dict[str, tuple[str, str | None]]) -> None:
        """Download one page of jobs to the end, commit, then drop the page's batch journals."""
        self.same_url = group_page(jobs, reused, self.writer, self.progress)
        firsts = [group[0] for group in self.same_url.values()]
        for outcome in self.pool.map(firsts, key=host_key, batch_size=CLUSTER_BATCH):
            self._finish(outcome)
        self.writer.flush()
        for journal in self.staging.glob(f"{self.catalog_id}.b*.journal"):
            journal.unlink(missing_ok=True)

    def _finish(self, outcome: _Outcome) -> None:
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
