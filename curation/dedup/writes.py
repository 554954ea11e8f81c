"""Catalog writes: statuses and crawl links that changed, the clustered mark, the crawl's re-finds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from curation.dedup.hash_table import HashTable, chunks
from curation.dedup.survivors import member_details

if TYPE_CHECKING:
    import numpy as np

    from curation.catalog import Catalog


# Images whose statuses are decided, compared with the catalog and written in one transaction. Each
# commit writes every index page it dirtied, and a batch of random sha256 keys dirties about one page
# per row: a full dedup of 1 M synthetic stress rows took 114 s with 5,000 and 75 s with 50,000
# (100k: 7.1 and 5.8 s; peak RSS +70 MiB at 100k, none at 1 M).
STATUS_BATCH = 50_000


EMBED_KIND = "embed+orb"  # a link proved by the embedding matcher: an embedding proposal, ORB + RANSAC


def status_row(sha: str, status: str, cluster: str | None = None, conflict: bool = False, reason: str | None = None):
    return {"sha256": sha, "status": status, "cluster_id": cluster, "label_conflict": conflict, "reason": reason}


def write_clusters(
    catalog: Catalog,
    table: HashTable,
    roots: np.ndarray,
    affected: np.ndarray,
    leaked: np.ndarray,
    conflict: np.ndarray | None = None,
    fresh: bool = False,
    proofs: Any = None,
) -> None:
    """Decide the statuses and crawl links of the affected rows' clusters, a batch of clusters at a
    time, and write what changed (``fresh``: nothing is stored yet, so write without reading). A
    ``conflict`` row flags its whole cluster as found for several classes (a stored flag that members
    not read carry). ``proofs`` (:class:`curation.dedup.matchers.Proofs`): members the hashes do not
    join to the survivor but a proved embedding link does get a link of that kind and score."""
    import numpy as np

    rows = np.flatnonzero(affected)
    rows = rows[np.argsort(roots[rows], kind="stable")]  # grouped by cluster, each in sha256 order
    starts = np.flatnonzero(np.r_[True, roots[rows][1:] != roots[rows][:-1]]) if len(rows) else rows
    ends = np.r_[starts[1:], len(rows)].astype(np.int64) if len(rows) else rows
    cluster_leaked = np.zeros(len(roots), dtype=bool)
    cluster_leaked[roots[leaked]] = True
    cluster_conflict = np.zeros(len(roots), dtype=bool)
    if conflict is not None:
        cluster_conflict[roots[conflict]] = True
    flags = (cluster_leaked[roots], cluster_conflict[roots], fresh, proofs)
    batch: list[np.ndarray] = []
    size = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        batch.append(rows[start:end])
        size += end - start
        if size >= STATUS_BATCH:
            _decide_and_write(catalog, table, batch, *flags)
            batch, size = [], 0
    if batch:
        _decide_and_write(catalog, table, batch, *flags)


def _decide_and_write(
    catalog: Catalog,
    table: HashTable,
    clusters: list[np.ndarray],
    leaked: np.ndarray,
    conflicted: np.ndarray,
    fresh: bool,
    proofs: Any = None,
) -> None:
    """Statuses and crawl links of whole clusters (rows); the survivor of a cluster of several: the
    largest resolution, then the most open licence, then the earliest found."""
    import numpy as np

    from curation.catalog import DUPLICATE, LEAKED, REPRESENTATIVE
    from curation.hashing import ORIENTATIONS

    several = [members for members in clusters if len(members) > 1]
    details = member_details(catalog, [table.shas[i].decode() for m in several for i in m])
    status_rows: dict[str, dict[str, Any]] = {}
    links: dict[str, dict[str, Any]] = {}
    for members in clusters:
        shas = [table.shas[i].decode() for i in members]
        is_leaked = bool(leaked[members[0]])
        if len(members) == 1:
            status_rows[shas[0]] = status_row(shas[0], LEAKED if is_leaked else REPRESENTATIVE)
            continue
        best = min(range(len(members)), key=lambda j: details[shas[j]].survival_order(shas[j]))
        rep_sha = shas[best]
        conflict = bool(conflicted[members[0]]) or len(set().union(*(details[sha].wnids for sha in shas))) > 1
        # The link names the survivor; in a chain of near-duplicates its distance can exceed the threshold.
        distances = np.bitwise_count(table.hashes[members][:, 0::2] ^ table.hashes[members[best], 0])
        nearest = np.argmin(distances, axis=1)  # the first orientation at the smallest distance
        for j, sha in enumerate(shas):
            status = LEAKED if is_leaked else (REPRESENTATIVE if j == best else DUPLICATE)
            status_rows[sha] = status_row(sha, status, rep_sha, conflict)
            if j != best:
                kind, distance = ORIENTATIONS[int(nearest[j])].kind, int(distances[j, nearest[j]])
                score = None
                proof = proofs.by_sha.get(sha) if proofs is not None else None
                if proof is not None and distance > proofs.max_distance:  # proved, not hash-joined
                    kind, distance, score = EMBED_KIND, proof[0], proof[1]
                links[sha] = {
                    "sha256": sha,
                    "other": rep_sha,
                    "reference": None,
                    "hash_kind": kind,
                    "distance": distance,
                    "score": score,
                }
    write_changes(catalog, status_rows, links, read_stored=not fresh)


def write_changes(
    catalog: Catalog,
    status_rows: dict[str, dict[str, Any]],
    crawl_links: dict[str, dict[str, Any]],
    read_stored: bool = True,
) -> None:
    """Write only what changed for the images of ``status_rows``: new and changed statuses, new,
    changed and stale crawl links (their stored rows read by primary key / index, unless nothing
    is stored). New rows go in sha256 order: neighbours in the random-keyed indexes share pages."""
    from sqlalchemy import bindparam, delete, insert, update

    from curation.catalog import DedupStatus, DuplicateLink, utcnow

    if not status_rows:
        return
    with catalog.session() as session:
        existing, old_links = _stored_rows(session, list(status_rows)) if read_stored else ({}, {})
        fields = ("status", "cluster_id", "label_conflict", "reason")
        new_rows = [status_rows[sha] for sha in sorted(status_rows) if sha not in existing]
        changed = [
            row
            for sha, row in status_rows.items()
            if sha in existing and existing[sha] != tuple(row[f] for f in fields)
        ]
        statuses = DedupStatus.__table__  # Core executemany: the ORM bulk paths cost ~4x as much here
        if new_rows:
            session.execute(insert(statuses).values(updated_at=utcnow()), new_rows)
        if changed:
            values = {f: bindparam(f"new_{f}") for f in fields}
            by_sha = statuses.c.sha256 == bindparam("row_sha")
            rows = [{"row_sha": row["sha256"], **{f"new_{f}": row[f] for f in fields}} for row in changed]
            session.execute(update(statuses).where(by_sha).values(**values, updated_at=utcnow()), rows)
        stale = [
            row.id
            for sha, row in old_links.items()
            if sha not in crawl_links
            or tuple(crawl_links[sha][k] for k in ("other", "hash_kind", "distance"))
            != (row.other, row.hash_kind, row.distance)
        ]
        if stale:
            session.execute(delete(DuplicateLink).where(DuplicateLink.id.in_(stale)))
        added = [crawl_links[sha] for sha in sorted(crawl_links) if sha not in old_links or old_links[sha].id in stale]
        if added:
            session.execute(insert(DuplicateLink.__table__).values(created_at=utcnow()), added)


def _stored_rows(session: Any, shas: list[str]) -> tuple[dict[str, tuple], dict[str, Any]]:
    """The stored status fields and crawl link of each of these images, by primary key / index."""
    from sqlalchemy import select

    from curation.catalog import DedupStatus, DuplicateLink

    existing, old_links = {}, {}
    status_columns = (DedupStatus.status, DedupStatus.cluster_id, DedupStatus.label_conflict, DedupStatus.reason)
    link_columns = (DuplicateLink.id, DuplicateLink.sha256, DuplicateLink.other, DuplicateLink.hash_kind)
    for part in chunks(shas):
        for sha, *fields in session.execute(
            select(DedupStatus.sha256, *status_columns).where(DedupStatus.sha256.in_(part))
        ):
            existing[sha] = tuple(fields)
        crawl = DuplicateLink.reference.is_(None)
        for row in session.execute(
            select(*link_columns, DuplicateLink.distance).where(DuplicateLink.sha256.in_(part), crawl)
        ):
            old_links[row.sha256] = row
    return existing, old_links


def found_again(session: Any, shas: list[str]) -> None:
    """Images the crawl found again (a new candidate: maybe another class, licence or first find)
    become new to dedup, so that its next run decides their clusters again: the survivor and the
    label-conflict flag depend on every candidate of every member. Their re-find count goes up, new
    ones included: a dedup run that read them before this commit then leaves them new."""
    from sqlalchemy import update

    from curation.catalog import PerceptualHash

    hashes = PerceptualHash.__table__
    for part in chunks(sorted(shas)):
        session.execute(
            update(hashes).where(hashes.c.sha256.in_(part)).values(clustered=False, refound=hashes.c.refound + 1)
        )


def no_statuses(catalog: Catalog) -> bool:
    """Whether no image has a dedup status yet (nor, then, a crawl link: both are written together)."""
    from sqlalchemy import select

    from curation.catalog import DedupStatus

    with catalog.session() as session:
        return session.scalar(select(DedupStatus.sha256).limit(1)) is None


def mark_clustered(catalog: Catalog, read: HashTable, rows: np.ndarray) -> None:
    """Record that these rows of ``read`` (a bool mask), new to dedup when read, are clustered and in
    the stored index: only those rows, and only at the re-find count read. An image that a second run
    hashed meanwhile (hashing precedes the dedup lock), or that the crawl found again since, stays new
    for the next run. Last: a crash before leaves them new, and the next run clusters them again to
    the same result. Runs of equal counts in sha256 order: each row is locked in the crawl's order."""
    import numpy as np
    from sqlalchemy import update

    from curation.catalog import PerceptualHash

    shas, counts = read.shas[rows], read.refound[rows]
    if not len(shas):
        return
    starts = np.flatnonzero(np.r_[True, counts[1:] != counts[:-1]])
    ends = np.r_[starts[1:], len(counts)]
    hashes = PerceptualHash.__table__
    with catalog.session() as session:
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            at_count = hashes.c.refound == int(counts[start])
            for part in chunks([sha.decode() for sha in shas[start:end].tolist()]):
                session.execute(update(hashes).where(hashes.c.sha256.in_(part), at_count).values(clustered=True))
