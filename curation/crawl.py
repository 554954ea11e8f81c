"""`curation crawl`: discover candidate images for each class, then download, validate and store them.

Two phases, each with a progress bar:

1. discover: ask each source for up to ``--per-class`` candidates per class (``--urls`` and
   ``--folder`` add every row/file of a list or directory); new candidates are ``pending``.
2. download: fetch every pending candidate (many connections overall, few per host), validate
   the bytes, store them by SHA-256 and mark the candidate ``downloaded``, ``failed`` or
   ``skipped`` with a short reason.

Everything is committed in small batches, so a killed crawl loses at most a few seconds of work:
a rerun removes files the catalog does not know and continues with the pending candidates.
"""

from __future__ import annotations

import argparse
import fcntl
import queue
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from tqdm import tqdm

from curation import counters, dedup, options, storage
from curation.catalog import (
    DOWNLOADED,
    FAILED,
    PENDING,
    SKIPPED,
    Candidate,
    Catalog,
    Image,
    ImageClass,
    Meta,
    SearchQuery,
    open_catalog,
    utcnow,
)
from curation.config import Settings
from curation.dialect import catalog_lock, insert_ignore
from curation.engine import open_cluster
from curation.errors import CurationError
from curation.netguard import AddressGuard, Resolver
from curation.sources import DEFAULT_SOURCES, LIST_SOURCES, WEB_SOURCES, Found, Skip, SourceError

# Reasons that mean "we chose not to take it" rather than "it did not work".
SKIP_REASONS = {"robots", "noai", "private_address", "bad_scheme", "too_small", "unknown_class"}
FLUSH_EVERY = 200
FLUSH_SECONDS = 1.0
# Pending candidates read per query; each page is fetched to its end before the next is read, a
# pause of one round of in-flight fetches (128 of 2,000 by default).
JOB_PAGE = 2000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("crawl", help="find, download, validate and store candidate images")
    parser.add_argument("--classes", help="comma-separated wnids (default: every class)")
    parser.add_argument(
        "--sources",
        help=f"comma-separated web sources: {', '.join(WEB_SOURCES)} "
        f"(default: [crawl] sources or {','.join(DEFAULT_SOURCES)}; none when --urls/--folder is given)",
    )
    parser.add_argument("--per-class", type=int, help="target candidates per class and source (default: 100)")
    parser.add_argument("--urls", type=Path, help="CSV/TSV/Parquet list with url,wnid[,license,author] columns")
    parser.add_argument("--folder", type=Path, help="local images: DIR/<wnid>/*, <wnid>_*.jpg files or manifest.csv")
    parser.add_argument("--retry-failed", action="store_true", help="also retry candidates that failed before")
    parser.set_defaults(func=run)


@dataclass
class Summary:
    """What one crawl did, for the closing line."""

    found: Counter = field(default_factory=Counter)  # new candidates per source
    listed_skips: Counter = field(default_factory=Counter)  # list/folder entries not taken, by reason
    source_problems: list[str] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)  # downloaded / failed / skipped
    reasons: Counter = field(default_factory=Counter)  # failed and skipped by reason
    new_images: int = 0
    interrupted: bool = False

    def line(self, seconds: float) -> str:
        found = sum(self.found.values())
        by_source = ", ".join(f"{s} {n}" for s, n in sorted(self.found.items()))
        parts = [f"found {found} new candidates" + (f" ({by_source})" if by_source else "")]
        if self.listed_skips:
            parts.append(f"{sum(self.listed_skips.values())} list entries skipped ({_counts(self.listed_skips)})")
        parts.append(f"downloaded {self.outcomes[DOWNLOADED]} ({self.new_images} new images)")
        for status in (FAILED, SKIPPED):
            reasons = Counter({r: n for (s, r), n in self.reasons.items() if s == status})
            parts.append(f"{status} {self.outcomes[status]}" + (f" ({_counts(reasons)})" if reasons else ""))
        state = "interrupted" if self.interrupted else "done"
        return f"crawl {state} in {seconds:.1f}s: " + "; ".join(parts)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common())


def _csv_arg(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the crawl stage from the command line."""
    summary = crawl(
        settings,
        classes=_csv_arg(args.classes),
        sources=_csv_arg(args.sources) if args.sources is not None else None,
        per_class=args.per_class,
        urls=args.urls,
        folder=args.folder,
        retry_failed=args.retry_failed,
    )
    return 130 if summary.interrupted else 0


@options.table("crawl")
@dataclass(frozen=True)
class CrawlOptions:
    """The crawl loop's keys of ``[crawl]`` (the downloader's are :class:`curation.downloader.FetchConfig`)."""

    per_class: int = 100
    sources: tuple[str, ...] = tuple(DEFAULT_SOURCES)
    min_side: int = 64
    max_pixels: int = 40_000_000
    max_bytes: int = 20 * 1024 * 1024
    concurrency: int = 32
    check_threads: int = 2


def crawl(
    settings: Settings,
    *,
    classes: list[str] | None = None,
    sources: list[str] | None = None,
    per_class: int | None = None,
    urls: Path | None = None,
    folder: Path | None = None,
    retry_failed: bool = False,
    resolver: Resolver | None = None,
) -> Summary:
    """Discover and download; returns the summary (also printed). ``resolver`` replaces DNS (tests)."""
    started = time.monotonic()
    config = options.resolve(CrawlOptions, settings, {"per_class": per_class})
    per_class = config.per_class
    if per_class < 0:
        raise CurationError("--per-class must be 0 or more")
    if sources is None:
        sources = [] if (urls or folder) else [s for item in config.sources for s in _csv_arg(item)]
    unknown = [s for s in sources if s not in WEB_SOURCES]
    if unknown:
        raise CurationError(f"unknown source(s) {', '.join(unknown)}; sources: {', '.join(WEB_SOURCES)}")
    summary = Summary()
    with ExitStack() as held:
        # Before the catalog: a cluster that cannot be joined, or a node blind to the data
        # directory, stops the run before anything is written. None for the local engine.
        cluster = open_cluster(settings, settings.data_dir)
        held.enter_context(cluster or nullcontext())
        catalog = open_catalog(settings.db_url)
        held.enter_context(_crawl_lock(settings.data_dir))
        held.enter_context(_catalog_crawl_lock(catalog))
        wnids = _select_classes(catalog, classes or [])
        try:
            if urls is not None:
                from curation.sources import urls as url_list

                _add_listed(catalog, url_list.discover(urls, set(wnids)), summary)
            if folder is not None:
                from curation.sources import folder as folder_source

                _add_listed(catalog, folder_source.discover(folder, set(wnids)), summary)
            downloader = _make_downloader(settings, resolver) if sources or urls is not None else None
            if sources and not (settings.get("crawl", "contact") or settings.get("crawl", "user_agent")):
                print(
                    "curation crawl: set [crawl] contact (an e-mail or URL): APIs ask for it in the User-Agent",
                    file=sys.stderr,
                )
            if sources:
                _discover_web(catalog, settings, downloader, sources, wnids, per_class, summary)
            used = [*sources, *(["urls"] if urls is not None else []), *(["folder"] if folder is not None else [])]
            wanted = wnids if classes else None
            _download(catalog, settings, downloader, wanted, used, retry_failed, summary, cluster)
        except KeyboardInterrupt:
            summary.interrupted = True
    for problem in summary.source_problems:
        print(f"curation crawl: {problem}", file=sys.stderr)
    print(summary.line(time.monotonic() - started))
    return summary


@contextmanager
def _crawl_lock(data_dir: Path) -> Iterator[None]:
    """One crawl at a time per data directory (the lock dies with the process, even on kill -9)."""
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        handle = open(Path(data_dir) / ".crawl.lock", "w")  # noqa: SIM115 - held for the whole crawl
    except OSError as exc:
        raise CurationError(f"cannot use the data directory {data_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise CurationError(f"another crawl is running on {data_dir}; wait for it or stop it") from None
    try:
        yield
    finally:
        handle.close()


@contextmanager
def _catalog_crawl_lock(catalog: Catalog) -> Iterator[None]:
    """One crawl at a time per catalog, whatever its data directory (drivers on several machines
    sharing a PostgreSQL catalog): a second driver stops before fetching anything."""
    with catalog_lock(catalog.engine, "crawl", wait=False) as held:
        if not held:
            raise CurationError("another crawl is running on this catalog; wait for it or stop it")
        yield


def _select_classes(catalog: Catalog, wanted: list[str]) -> list[str]:
    from curation.kinds import label_only_wnids

    with catalog.session() as session:
        known = list(session.scalars(select(ImageClass.wnid).order_by(ImageClass.wnid)))
        label_only = label_only_wnids(session)
    if not wanted:
        return [w for w in known if w not in label_only]
    missing = sorted(set(wanted) - set(known))
    if missing:
        raise CurationError(f"unknown class(es) {', '.join(missing[:5])}: see `curation classes list`")
    return [w for w in known if w in set(wanted)]


def _make_downloader(settings: Settings, resolver: Resolver | None) -> Any:
    from curation.downloader import Downloader, FetchConfig

    config = FetchConfig.from_settings(settings.section("crawl"))
    try:
        guard = AddressGuard(config.allow_private_hosts, resolver)
    except ValueError as exc:
        raise CurationError(str(exc)) from None
    return Downloader(config, guard)


# --------------------------------------------------------------------------- discover


def _save_found(catalog: Catalog, found: list[Found]) -> int:
    """Add candidates; returns how many were new."""
    if not found:
        return 0
    rows = [
        {**vars(f), "status": PENDING, "attempts": 0, "created_at": utcnow(), "updated_at": utcnow()} for f in found
    ]
    with catalog.session() as session:
        return insert_ignore(session, Candidate, rows, count=True)


def _add_listed(catalog: Catalog, entries: Iterable[Found | Skip], summary: Summary) -> None:
    batch: list[Found] = []
    for entry in tqdm(entries, desc="discover", unit=" entries", disable=None):
        if isinstance(entry, Skip):
            summary.listed_skips[entry.reason] += 1
            continue
        batch.append(entry)
        if len(batch) >= 1000:
            summary.found[entry.source] += _save_found(catalog, batch)
            batch = []
    if batch:
        summary.found[batch[0].source] += _save_found(catalog, batch)


def _discover_web(
    catalog: Catalog,
    settings: Settings,
    downloader: Any,
    names: list[str],
    wnids: list[str],
    per_class: int,
    summary: Summary,
) -> None:
    from curation.sources import make_source
    from curation.sources.api import ApiClient

    with catalog.session() as session:
        queries: dict[str, list[str]] = {}
        for wnid, query in session.execute(
            select(SearchQuery.wnid, SearchQuery.query).order_by(SearchQuery.wnid, SearchQuery.position)
        ):
            queries.setdefault(wnid, []).append(query)
        have = Counter(
            {
                (w, s): n
                for w, s, n in session.execute(
                    select(Candidate.wnid, Candidate.source, func.count()).group_by(Candidate.wnid, Candidate.source)
                )
            }
        )
    for name in names:
        config = settings.source(name)
        try:
            source = make_source(name, config, ApiClient(downloader, name, config))
        except SourceError as exc:
            summary.source_problems.append(f"source {name} skipped: {exc}")
            continue
        todo = [w for w in wnids if queries.get(w) and have[(w, name)] < per_class]
        for wnid in tqdm(todo, desc=f"discover {name}", unit=" classes", disable=None):
            with catalog.session() as session:
                known = set(
                    session.scalars(select(Candidate.url).where(Candidate.wnid == wnid, Candidate.source == name))
                )
            try:
                # The source pages from its start, so ask for the whole target and keep what is new.
                found = [f for f in source.search(wnid, queries[wnid], per_class) if f.url not in known]
            except SourceError as exc:
                summary.source_problems.append(f"source {name} stopped at {wnid}: {exc}")
                break
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                summary.source_problems.append(f"source {name} stopped at {wnid}: unexpected response ({exc!r})")
                break
            summary.found[name] += _save_found(catalog, found)


# --------------------------------------------------------------------------- download


@dataclass
class _Job:
    id: int
    wnid: str
    url: str
    source: str
    attempts: int


@dataclass
class _Outcome:
    job: _Job
    status: str
    reason: str | None = None
    detail: str | None = None
    image: storage.ValidImage | None = None
    final_url: str | None = None  # where the bytes came from, after redirects


def _job_conditions(status: str, used: list[str], wnids: list[str] | None) -> list[Any]:
    conditions = [Candidate.status == status, Candidate.source.in_(used)]
    return conditions if wnids is None else [*conditions, Candidate.wnid.in_(wnids)]


def _job_statuses(retry_failed: bool) -> list[str]:
    """Failed ones first, so a candidate that fails in this run is not retried twice."""
    return [FAILED, PENDING] if retry_failed else [PENDING]


def _count_jobs(catalog: Catalog, wnids: list[str] | None, used: list[str], retry_failed: bool) -> int:
    with catalog.session() as session:
        return sum(
            session.scalar(select(func.count()).where(*_job_conditions(status, used, wnids)))
            for status in _job_statuses(retry_failed)
        )


def _pending_jobs(
    catalog: Catalog, wnids: list[str] | None, used: list[str], retry_failed: bool, page: int = JOB_PAGE
) -> Iterator[list[_Job]]:
    """The candidates to fetch (``wnids`` None: every class), in pages by id: each page is one query on
    the status index from the last id seen, so memory holds a page, not every pending row."""
    for status in _job_statuses(retry_failed):
        last = 0
        while True:
            with catalog.session() as session:
                rows = session.execute(
                    select(Candidate.id, Candidate.wnid, Candidate.url, Candidate.source, Candidate.attempts)
                    .where(*_job_conditions(status, used, wnids), Candidate.id > last)
                    .order_by(Candidate.id)
                    .limit(page)
                ).all()
            if not rows:
                break
            last = rows[-1][0]
            yield [_Job(*row) for row in rows]


def _known_urls(session: Session, urls: list[str]) -> dict[str, tuple[str, str | None]]:
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


def _download(
    catalog: Catalog,
    settings: Settings,
    downloader: Any,
    wnids: list[str] | None,
    used: list[str],
    retry_failed: bool,
    summary: Summary,
    cluster: Any = None,
) -> None:
    """Download the pending jobs page by page, here (``cluster`` None) or on a cluster's workers
    (then only a folder's files, which the workers may not see, are read here)."""
    used = [s for s in used if s in (*WEB_SOURCES, *LIST_SOURCES)]
    journal = _open_store(catalog, settings)
    try:
        total = _count_jobs(catalog, wnids, used, retry_failed)
        if not total:
            return
        writer = _OutcomeWriter(catalog, summary, journal)
        progress = tqdm(total=total, desc="download", unit=" img", disable=None)
        pipeline = _Pipeline(settings, downloader, journal, writer, progress)
        remote = None
        if cluster is not None:
            from curation.crawl_cluster import ClusterPipeline

            remote = ClusterPipeline(cluster, settings, journal.name, writer, progress)
        try:
            for jobs in _pending_jobs(catalog, wnids, used, retry_failed, JOB_PAGE):
                with catalog.session() as session:
                    reused = _known_urls(session, sorted({j.url for j in jobs if j.source != "folder"}))
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
        finally:
            pipeline.close()
            if remote is not None:
                remote.close()
            writer.flush()
            progress.close()
    finally:
        journal.close()


def _open_store(catalog: Catalog, settings: Settings) -> storage.WriteJournal:
    """Claim the image store, remove what a killed run left in flight, and open this run's journal."""
    with catalog.session() as session:
        catalog_id = session.get(Meta, "catalog_id")
        if catalog_id is None:
            catalog_id = Meta(key="catalog_id", value=uuid.uuid4().hex)
            session.add(catalog_id)
        name = catalog_id.value
    owned = storage.claim(settings.data_dir, name)
    if not owned:
        print(
            f"curation crawl: {settings.images_dir} belongs to another catalog; its unrecorded files are left alone",
            file=sys.stderr,
        )
    temps, orphans = storage.recover(settings.data_dir, name, partial(_recorded_paths, catalog), remove_unknown=owned)
    if temps or orphans:
        print(
            f"curation crawl: removed {temps} partial and {orphans} unrecorded files of an earlier run", file=sys.stderr
        )
    return storage.WriteJournal(settings.data_dir, name)


def _recorded_paths(catalog: Catalog, paths: list[str]) -> set[str]:
    """Which of these store paths the catalog knows (looked up by the hash that names each file)."""
    by_sha = {Path(p).name.split(".")[0]: p for p in paths}
    with catalog.session() as session:
        return {
            path
            for start in range(0, len(by_sha), 500)
            for path in session.scalars(select(Image.path).where(Image.sha256.in_(list(by_sha)[start : start + 500])))
        }


def group_page(
    jobs: list[_Job], reused: dict[str, tuple[str, str | None]], writer: _OutcomeWriter, progress: tqdm
) -> dict[str, list[_Job]]:
    """Record the jobs whose URL was downloaded before (for another class) and group the rest by
    URL: one fetch serves every job of a group."""
    same_url: dict[str, list[_Job]] = {}
    for job in jobs:
        if job.url in reused:
            sha, final_url = reused[job.url]
            writer.add(_Outcome(job, DOWNLOADED, image=None, detail=sha, final_url=final_url))
            progress.update()
        else:
            same_url.setdefault(job.url, []).append(job)
    return same_url


class _Pipeline:
    """Fetching waits on the network, checking uses the CPU: separate pools keep every connection
    busy while images are decoded (the decoder releases the GIL). One fetch serves every class
    that found the same URL."""

    def __init__(
        self, settings: Settings, downloader: Any, journal: storage.WriteJournal, writer: _OutcomeWriter, progress: tqdm
    ) -> None:
        config = options.resolve(CrawlOptions, settings)
        self.min_side, self.max_pixels, self.max_bytes = config.min_side, config.max_pixels, config.max_bytes
        self.concurrency = max(1, config.concurrency)
        self.data_dir, self.downloader, self.journal = settings.data_dir, downloader, journal
        self.writer, self.progress = writer, progress
        self.done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self.fetchers = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="crawl-fetch")
        self.checkers = ThreadPoolExecutor(max_workers=max(1, config.check_threads), thread_name_prefix="crawl-check")
        self.same_url: dict[str, list[_Job]] = {}
        self.unfinished = 0

    def run(self, jobs: list[_Job], reused: dict[str, tuple[str, str | None]]) -> None:
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

    def fetch(self, job: _Job) -> _Outcome | None:
        fetched = _fetch_bytes(job, self.downloader, self.max_bytes)
        if isinstance(fetched, _Outcome):
            return fetched
        self.checkers.submit(self.check, job, *fetched).add_done_callback(self.done.put)
        return None  # the outcome comes from the check

    def check(self, job: _Job, data: bytes, final_url: str) -> _Outcome:
        return _check_and_store(job, data, final_url, self.min_side, self.max_pixels, self.data_dir, self.journal)

    def _finish(self, outcome: _Outcome) -> None:
        for job in self.same_url[outcome.job.url]:
            self.writer.add(replace(outcome, job=job))
            self.progress.update()

    def _handle_one(self) -> None:
        outcome = self.done.get().result()
        if outcome is not None:
            self._finish(outcome)
            self.unfinished -= 1

    def interrupt(self) -> None:
        """Ctrl-C: stop fetching, record what already finished."""
        self.fetchers.shutdown(wait=True, cancel_futures=True)
        self.checkers.shutdown(wait=True, cancel_futures=True)
        while not self.done.empty():
            future = self.done.get()
            if not future.cancelled() and future.exception() is None and future.result() is not None:
                self._finish(future.result())

    def close(self) -> None:
        self.fetchers.shutdown(wait=True)
        self.checkers.shutdown(wait=True)


def _fetch_bytes(job: _Job, downloader: Any, max_bytes: int) -> tuple[bytes, str] | _Outcome:
    """The job's bytes and final URL, or its failed/skipped outcome."""
    from curation.downloader import FetchError

    try:
        if job.source == "folder":
            return _read_local(job.url, max_bytes), job.url
        fetched = downloader.fetch(job.url)
        return fetched.data, fetched.url
    except (FetchError, storage.Rejected, _LocalFileError) as exc:
        return _Outcome(job, _status_of(exc.reason), exc.reason, (getattr(exc, "detail", "") or str(exc))[:500])


def _check_and_store(
    job: _Job,
    data: bytes,
    final_url: str,
    min_side: int,
    max_pixels: int,
    data_dir: Path,
    journal: storage.WriteJournal,
) -> _Outcome:
    """Validate the bytes and store an accepted image (journaled before it appears)."""
    try:
        image = storage.validate(data, min_side=min_side, max_pixels=max_pixels)
    except storage.Rejected as exc:
        return _Outcome(job, _status_of(exc.reason), exc.reason, exc.detail[:500])
    storage.store(data_dir, image, data, journal)
    return _Outcome(job, DOWNLOADED, image=image, final_url=final_url)


class _LocalFileError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _read_local(url: str, max_bytes: int) -> bytes:
    path = Path(url2pathname(urlsplit(url).path))
    try:
        if path.stat().st_size > max_bytes:
            raise storage.Rejected("too_large", f"{path.stat().st_size} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise _LocalFileError("missing_file", str(path)) from None
    except OSError as exc:
        raise _LocalFileError("unreadable_file", f"{path}: {exc.strerror}") from None


def _status_of(reason: str) -> str:
    return SKIPPED if reason in SKIP_REASONS else FAILED


class _OutcomeWriter:
    """Writes outcomes to the catalog in batches (images first, then their candidates)."""

    def __init__(self, catalog: Catalog, summary: Summary, journal: storage.WriteJournal) -> None:
        self.catalog = catalog
        self.summary = summary
        self.journal = journal
        self.batch: list[_Outcome] = []
        self.last_flush = time.monotonic()

    def add(self, outcome: _Outcome) -> None:
        self.batch.append(outcome)
        if len(self.batch) >= FLUSH_EVERY or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        now = utcnow()
        images = {o.image.sha256: o.image for o in batch if o.image is not None}
        updates = []
        for o in batch:
            sha = o.image.sha256 if o.image is not None else (o.detail if o.status == DOWNLOADED else None)
            updates.append(
                {
                    "id": o.job.id,
                    "status": o.status,
                    "reason": o.reason,
                    "last_error": None if o.status == DOWNLOADED else o.detail,
                    "image_sha256": sha,
                    "final_url": o.final_url,
                    "attempts": o.job.attempts + 1,
                    "updated_at": now,
                }
            )
        with self.catalog.session() as session:
            seq = counters.take_next(session, counters.DOWNLOADS)
            for row in updates:
                row["download_seq"] = seq if row["status"] == DOWNLOADED else None
            stored = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(list(images)))))
            insert_ignore(
                session,
                Image,
                [
                    {
                        "sha256": i.sha256,
                        "path": i.relative_path,
                        "width": i.width,
                        "height": i.height,
                        "format": i.format,
                        "bytes": i.size,
                        "mode": i.mode,
                        "multi_class": False,
                        "created_at": now,
                    }
                    for i in images.values()
                ],
            )
            session.execute(update(Candidate), updates)
            shas = [u["image_sha256"] for u in updates if u["image_sha256"]]
            shared = (
                select(Candidate.image_sha256)
                .where(Candidate.image_sha256.in_(shas))
                .group_by(Candidate.image_sha256)
                .having(func.count(func.distinct(Candidate.wnid)) > 1)
            )
            session.execute(update(Image).where(Image.sha256.in_(shared)).values(multi_class=True))
            dedup.found_again(session, sorted(set(shas) - (set(images) - stored)))
        self.journal.recorded(i.relative_path for i in images.values())
        self.summary.new_images += len(set(images) - stored)
        for o in batch:
            self.summary.outcomes[o.status] += 1
            if o.reason:
                self.summary.reasons[(o.status, o.reason)] += 1
