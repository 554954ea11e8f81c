"""The discover phase: new candidates from URL lists, folders and web sources (status ``pending``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from tqdm import tqdm

from curation.catalog import PENDING, Candidate, Catalog, SearchQuery, utcnow
from curation.config import Settings
from curation.crawl.summary import Summary
from curation.dialect import insert_ignore
from curation.sources import Found, Skip, SourceError

LISTED_BATCH = 1000  # list/folder entries per insert


def save_found(catalog: Catalog, found: list[Found]) -> int:
    """Add candidates; returns how many were new."""
    if not found:
        return 0
    rows = [
        {**vars(f), "status": PENDING, "attempts": 0, "created_at": utcnow(), "updated_at": utcnow()} for f in found
    ]
    with catalog.session() as session:
        return insert_ignore(session, Candidate, rows, count=True)


def add_listed(catalog: Catalog, entries: Iterable[Found | Skip], summary: Summary) -> None:
    batch: list[Found] = []
    for entry in tqdm(entries, desc="discover", unit=" entries", disable=None):
        if isinstance(entry, Skip):
            summary.listed_skips[entry.reason] += 1
            continue
        batch.append(entry)
        if len(batch) >= LISTED_BATCH:
            summary.found[entry.source] += save_found(catalog, batch)
            batch = []
    if batch:
        summary.found[batch[0].source] += save_found(catalog, batch)


def _queries_and_counts(catalog: Catalog) -> tuple[dict[str, list[str]], Counter]:
    """Each class's search queries, and how many candidates each (class, source) has."""
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
    return queries, have


def discover_web(
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

    queries, have = _queries_and_counts(catalog)
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
            summary.found[name] += save_found(catalog, found)
