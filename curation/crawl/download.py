"""The download phase: pending jobs page by page, here or on a cluster's workers, into the image store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from curation.catalog import Catalog
from curation.config import Settings
from curation.crawl import jobs as job_pages
from curation.crawl.cluster import ClusterPipeline
from curation.crawl.jobs import count_jobs, known_urls
from curation.crawl.pipeline import Pipeline
from curation.crawl.summary import Summary
from curation.crawl.writer import OutcomeWriter
from curation.crawl.writes import open_writes
from curation.sources import LIST_SOURCES, WEB_SOURCES
from curation.store import ImageStore


@dataclass(frozen=True)
class Wanted:
    """Which pending candidates to download: of ``wnids`` (None: every class) and ``sources``,
    failed ones too with ``retry_failed``."""

    wnids: list[str] | None
    sources: list[str]
    retry_failed: bool


def download(
    catalog: Catalog,
    settings: Settings,
    store: ImageStore,
    downloader: Any,
    wanted: Wanted,
    summary: Summary,
    cluster: Any = None,
) -> None:
    """Download the pending jobs ``wanted`` into ``store``, here (``cluster`` None) or on a cluster's
    workers (then only a folder's files, which the workers may not see, are read here)."""
    wnids, retry_failed = wanted.wnids, wanted.retry_failed
    used = [s for s in wanted.sources if s in (*WEB_SOURCES, *LIST_SOURCES)]
    catalog_id, journal = open_writes(catalog, settings.data_dir, store)
    try:
        total = count_jobs(catalog, wnids, used, retry_failed)
        if not total:
            return
        writer = OutcomeWriter(catalog, summary, journal)
        progress = tqdm(total=total, desc="download", unit=" img", disable=None)
        pipeline = Pipeline(settings, downloader, store, journal, writer, progress)
        remote = None
        if cluster is not None:
            remote = ClusterPipeline(cluster, settings, store, catalog_id, writer, progress)
        try:
            for jobs in job_pages.pending_jobs(catalog, wnids, used, retry_failed, job_pages.JOB_PAGE):
                with catalog.session() as session:
                    reused = known_urls(session, sorted({j.url for j in jobs if j.source != "folder"}))
                if remote is None:
                    pipeline.run(jobs, reused)
                else:
                    pipeline.run([j for j in jobs if j.source == "folder"], reused)
                    remote.run([j for j in jobs if j.source != "folder"], reused)
        except KeyboardInterrupt:
            pipeline.interrupt()
            if remote is not None:
                remote.interrupt()
            raise
        except BaseException:  # a store error: record what finished, then the one line
            pipeline.interrupt()
            raise
        finally:
            pipeline.close()
            if remote is not None:
                remote.close()
            writer.flush()
            progress.close()
    finally:
        journal.close()
