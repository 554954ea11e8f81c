"""`curation crawl`: the command, its locks, and the two phases in order."""

from __future__ import annotations

import argparse
import fcntl
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import select

from curation import options
from curation.catalog import Catalog, ImageClass, open_catalog
from curation.config import Settings
from curation.crawl.config import CrawlOptions
from curation.crawl.discover import add_listed, discover_web
from curation.crawl.download import Wanted, download
from curation.crawl.summary import Summary
from curation.dialect import catalog_lock
from curation.engine import open_cluster
from curation.errors import CurationError
from curation.netguard import AddressGuard, Resolver
from curation.sources import DEFAULT_SOURCES, WEB_SOURCES
from curation.store import ImageStore, StorageOptions, open_images
from curation.store.preflight import preflight, preflight_nodes


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


def csv_arg(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the crawl stage from the command line."""
    summary = crawl(
        settings,
        classes=csv_arg(args.classes),
        sources=csv_arg(args.sources) if args.sources is not None else None,
        per_class=args.per_class,
        urls=args.urls,
        folder=args.folder,
        retry_failed=args.retry_failed,
    )
    return 130 if summary.interrupted else 0


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
    per_class = options.resolve(CrawlOptions, settings, {"per_class": per_class}).per_class
    if per_class < 0:
        raise CurationError("--per-class must be 0 or more")
    sources = _sources(settings, sources, urls or folder)
    summary = Summary()
    with ExitStack() as held:
        store, cluster = _checked_store(settings)
        held.enter_context(cluster or nullcontext())
        catalog = open_catalog(settings.db_url)
        held.enter_context(_crawl_lock(settings.data_dir))
        held.enter_context(_catalog_crawl_lock(catalog))
        wnids = _select_classes(catalog, classes or [])
        try:
            if urls is not None:
                from curation.sources import urls as url_list

                add_listed(catalog, url_list.discover(urls, set(wnids)), summary)
            if folder is not None:
                from curation.sources import folder as folder_source

                add_listed(catalog, folder_source.discover(folder, set(wnids)), summary)
            downloader = _make_downloader(settings, resolver) if sources or urls is not None else None
            if sources and not (settings.get("crawl", "contact") or settings.get("crawl", "user_agent")):
                print(
                    "curation crawl: set [crawl] contact (an e-mail or URL): APIs ask for it in the User-Agent",
                    file=sys.stderr,
                )
            if sources:
                discover_web(catalog, settings, downloader, sources, wnids, per_class, summary)
            used = [*sources, *(["urls"] if urls is not None else []), *(["folder"] if folder is not None else [])]
            wanted = Wanted(wnids if classes else None, used, retry_failed)
            download(catalog, settings, store, downloader, wanted, summary, cluster)
        except KeyboardInterrupt:
            summary.interrupted = True
    for problem in summary.source_problems:
        print(f"curation crawl: {problem}", file=sys.stderr)
    print(summary.line(time.monotonic() - started))
    return summary


def _sources(settings: Settings, sources: list[str] | None, listed: Any) -> list[str]:
    """The web sources to ask: the given ones, else ``[crawl] sources`` (none with a list or folder)."""
    if sources is None:
        configured = options.resolve(CrawlOptions, settings).sources
        sources = [] if listed else [s for item in configured for s in csv_arg(item)]
    unknown = [s for s in sources if s not in WEB_SOURCES]
    if unknown:
        raise CurationError(f"unknown source(s) {', '.join(unknown)}; sources: {', '.join(WEB_SOURCES)}")
    return sources


def _checked_store(settings: Settings) -> tuple[ImageStore, Any]:
    """The image store and the cluster (None for the local engine), once this machine and every
    node have written, read and deleted a check object there: a store or cluster problem stops the
    run with one line before anything is written. The cluster comes first: an unreachable one must
    not leave the driver's preflight folder (a new data directory) behind."""
    cluster = open_cluster(settings)
    try:
        store = open_images(settings)
        preflight(store, "the driver")
        if cluster is not None:
            preflight_nodes(store, cluster, options.resolve(StorageOptions, settings).retry_seconds)
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    return store, cluster


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
