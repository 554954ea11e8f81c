"""The download's units: a job per pending candidate, read in pages by id, and an outcome per job."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from curation import storage
from curation.catalog import DOWNLOADED, FAILED, PENDING, SKIPPED, Candidate, Catalog
from curation.store import image_key

# Reasons that mean "we chose not to take it" rather than "it did not work".
SKIP_REASONS = {"robots", "noai", "private_address", "bad_scheme", "too_small", "unknown_class"}
# Pending candidates read per query; each page is fetched to its end before the next is read, a
# pause of one round of in-flight fetches (128 of 2,000 by default).
JOB_PAGE = 2000


@dataclass
class Job:
    id: int
    wnid: str
    url: str
    source: str
    attempts: int


@dataclass
class Outcome:
    job: Job
    status: str
    reason: str | None = None
    detail: str | None = None
    image: storage.ValidImage | None = None
    final_url: str | None = None  # where the bytes came from, after redirects


@dataclass
class Accepted:
    """Bytes that passed validation, on their way into the image store."""

    job: Job
    image: storage.ValidImage
    data: bytes
    final_url: str

    @property
    def key(self) -> str:
        return image_key(self.image.sha256, self.image.ext)

    def stored(self) -> Outcome:
        return Outcome(self.job, DOWNLOADED, image=self.image, final_url=self.final_url)


def status_of(reason: str) -> str:
    return SKIPPED if reason in SKIP_REASONS else FAILED


def job_conditions(status: str, used: list[str], wnids: list[str] | None) -> list[Any]:
    conditions = [Candidate.status == status, Candidate.source.in_(used)]
    return conditions if wnids is None else [*conditions, Candidate.wnid.in_(wnids)]


def job_statuses(retry_failed: bool) -> list[str]:
    """Failed ones first, so a candidate that fails in this run is not retried twice."""
    return [FAILED, PENDING] if retry_failed else [PENDING]


def count_jobs(catalog: Catalog, wnids: list[str] | None, used: list[str], retry_failed: bool) -> int:
    with catalog.session() as session:
        return sum(
            session.scalar(select(func.count()).where(*job_conditions(status, used, wnids)))
            for status in job_statuses(retry_failed)
        )


def pending_jobs(
    catalog: Catalog, wnids: list[str] | None, used: list[str], retry_failed: bool, page: int = JOB_PAGE
) -> Iterator[list[Job]]:
    """The candidates to fetch (``wnids`` None: every class), in pages by id: each page is one query on
    the status index from the last id seen, so memory holds a page, not every pending row."""
    for status in job_statuses(retry_failed):
        last = 0
        while True:
            with catalog.session() as session:
                rows = session.execute(
                    select(Candidate.id, Candidate.wnid, Candidate.url, Candidate.source, Candidate.attempts)
                    .where(*job_conditions(status, used, wnids), Candidate.id > last)
                    .order_by(Candidate.id)
                    .limit(page)
                ).all()
            if not rows:
                break
            last = rows[-1][0]
            yield [Job(*row) for row in rows]


def known_urls(session: Session, urls: list[str]) -> dict[str, tuple[str, str | None]]:
    """Image hashes and final URLs of URLs already downloaded for some class (so they are not fetched again)."""
    known: dict[str, tuple[str, str | None]] = {}
    for start in range(0, len(urls), 500):
        chunk = urls[start : start + 500]
        for url, sha, final_url in session.execute(
            select(Candidate.url, Candidate.image_sha256, Candidate.final_url).where(
                Candidate.status == DOWNLOADED, Candidate.url.in_(chunk)
            )
        ):
            known[url] = (sha, final_url)
    return known


def group_page(
    jobs: list[Job], reused: dict[str, tuple[str, str | None]], writer: Any, progress: Any
) -> dict[str, list[Job]]:
    """Record the jobs whose URL was downloaded before (for another class) and group the rest by
    URL: one fetch serves every job of a group."""
    same_url: dict[str, list[Job]] = {}
    for job in jobs:
        if job.url in reused:
            sha, final_url = reused[job.url]
            writer.add(Outcome(job, DOWNLOADED, image=None, detail=sha, final_url=final_url))
            progress.update()
        else:
            same_url.setdefault(job.url, []).append(job)
    return same_url
