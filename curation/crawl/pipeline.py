"""The local download loop: fetching waits on the network, checking uses the CPU, putting waits on
the image store. Three pools keep every connection busy while images are decoded (the decoder
releases the GIL), and no check waits on a store round trip: with puts inside the 2 check threads a
crawl-shaped run reached 0.13x of local disk at a 30 ms round trip, 0.55x with them in a pool
(notes/object_store.md). One fetch serves every class that found the same URL."""

from __future__ import annotations

import queue
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from tqdm import tqdm

from curation import options, storage
from curation.config import Settings
from curation.crawl.config import CrawlOptions
from curation.crawl.fetching import check, fetch_bytes
from curation.crawl.jobs import Accepted, Job, Outcome, group_page
from curation.crawl.writer import OutcomeWriter
from curation.crawl.writes import put
from curation.store import ImageStore


class Pipeline:
    """Jobs in, outcomes to the writer; at most ``4 x concurrency`` jobs (and their bytes) in flight."""

    def __init__(
        self,
        settings: Settings,
        downloader: Any,
        store: ImageStore,
        journal: storage.WriteJournal,
        writer: OutcomeWriter,
        progress: tqdm,
    ) -> None:
        config = options.resolve(CrawlOptions, settings)
        self.min_side, self.max_pixels, self.max_bytes = config.min_side, config.max_pixels, config.max_bytes
        self.concurrency = max(1, config.concurrency)
        self.downloader, self.store, self.journal = downloader, store, journal
        self.writer, self.progress = writer, progress
        self.done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self.pools = [
            ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="crawl-fetch"),
            ThreadPoolExecutor(max_workers=max(1, config.check_threads), thread_name_prefix="crawl-check"),
            ThreadPoolExecutor(max_workers=max(1, config.upload_threads), thread_name_prefix="crawl-put"),
        ]
        self.fetchers, self.checkers, self.uploaders = self.pools
        self.same_url: dict[str, list[Job]] = {}
        self.unfinished = 0

    def run(self, jobs: list[Job], reused: dict[str, tuple[str, str | None]]) -> None:
        """Download one page of jobs to the end (so the next page sees its URLs as known)."""
        self.same_url = group_page(jobs, reused, self.writer, self.progress)
        for group in self.same_url.values():
            self.fetchers.submit(self.fetch, group[0]).add_done_callback(self.done.put)
            self.unfinished += 1
            while self.unfinished >= self.concurrency * 4:
                self._handle_one()
        while self.unfinished:
            self._handle_one()
        self.writer.flush()

    def fetch(self, job: Job) -> Outcome | None:
        fetched = fetch_bytes(job, self.downloader, self.max_bytes)
        if isinstance(fetched, Outcome):
            return fetched
        self.checkers.submit(self.check, job, *fetched).add_done_callback(self.done.put)
        return None  # the outcome comes from the check

    def check(self, job: Job, data: bytes, final_url: str) -> Outcome | None:
        checked = check(job, data, final_url, self.min_side, self.max_pixels)
        if isinstance(checked, Outcome):
            return checked
        self.journal.begin(checked.key)  # before the object can exist
        self.uploaders.submit(self.upload, checked).add_done_callback(self.done.put)
        return None  # the outcome comes from the put

    def upload(self, accepted: Accepted) -> Outcome:
        outcome = put(self.store, accepted)
        if outcome.image is None:  # another object holds the key: not this run's to delete
            self.journal.recorded([accepted.key])
        return outcome

    def _finish(self, outcome: Outcome) -> None:
        for job in self.same_url[outcome.job.url]:
            self.writer.add(replace(outcome, job=job))
            self.progress.update()

    def _handle_one(self) -> None:
        outcome = self.done.get().result()
        if outcome is not None:
            self._finish(outcome)
            self.unfinished -= 1

    def interrupt(self) -> None:
        """Ctrl-C or a store error: start nothing new, record what already finished (a put not made
        stays journaled: the next run's recovery finds no object for it)."""
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)
        while not self.done.empty():
            future = self.done.get()
            if not future.cancelled() and future.exception() is None and future.result() is not None:
                self._finish(future.result())

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown(wait=True)
