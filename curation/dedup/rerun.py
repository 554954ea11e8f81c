"""The incremental rerun: new images searched in the stored index, merged into the clusters they hit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curation.dedup import hash_table, writes  # load_table, mark_clustered: one place to wrap in tests
from curation.dedup.config import Match
from curation.dedup.hash_table import NEW_ONLY, HashTable, chunks, cluster
from curation.dedup.references import check_references
from curation.dedup.survivors import decide_survivors
from curation.dedup.writes import write_clusters

if TYPE_CHECKING:
    import numpy as np

    from curation.catalog import Catalog


def cluster_new(
    catalog: Catalog, index: Any, references: dict[str, Any], match: Match, matcher: Any = None, data_dir: Any = None
) -> bool:
    """The rerun: search the new images in the stored index and merge them into the stored clusters
    they hit, reading each hit cluster's representative only (its survivor, and the cluster's
    leaked and label-conflict flags, stand for all its members). A stored cluster of several is read
    whole only when its representative loses: to a new image, or to another cluster's. ``matcher``:
    the embedding matcher, whose proved pairs join the hash hits. Returns whether there were new images."""
    import numpy as np

    from curation.dedup.matchers import add_stored_proofs, embedding_round

    new = hash_table.load_table(catalog, match.orientations, full=False, subset=NEW_ONLY)
    if not len(new.shas):
        return False
    new_shas = new.shas.astype(str).tolist()
    queried = {name: (ref, new_shas) for name, ref in references.items()}
    proved, proofs = embedding_round(matcher, catalog, data_dir, new_shas, queried, match.max_distance)
    query_rows, hit_shas = _index_hits(index, new, match)
    if proved.edges:  # proved pairs of a new image are hits like the index's
        query_rows = np.concatenate([query_rows, new.rows([a for a, _ in proved.edges])])
        hit_shas = np.concatenate([hit_shas, np.array([b for _, b in proved.edges], dtype="S64")])
    stored = _stored_clusters(catalog, np.unique(hit_shas))
    keys = np.array([stored[sha].key for sha in hit_shas.tolist()], dtype="S64")

    def merge(members: set[str], checked_now: dict[str, Any]) -> tuple[Any, ...]:
        """Read the new images, the hit representatives and ``members``; cluster them and decide."""
        table = hash_table.load_table(
            catalog, match.orientations, full=False, subset=_subset(new.shas, stored, members)
        )
        links = (table.rows(new.shas[query_rows]), table.rows(keys))
        roots = cluster(table, match.max_distance, match.margin, full=False, links=links)
        leaked = check_references(catalog, table, checked_now, match, np.flatnonzero(table.new), proved.reference_links)
        return table, roots, leaked, _StoredFlags.of(table, stored), *decide_survivors(catalog, table, roots)

    table, roots, leaked, flags, survivors, conflicted = merge(set(), references)
    losing = flags.losing_clusters(table, roots, survivors)
    if losing:  # read those clusters whole: every member's link and cluster id change
        table, roots, leaked, flags, survivors, conflicted = merge(_cluster_members(catalog, losing), {})
    leaked |= flags.leaked
    index.add(new.shas, new.hashes)
    index.commit(catalog)  # before the statuses: every image with a status is in the index
    conflicted |= {int(root) for root in roots[flags.conflict]}
    _spread_flags(catalog, table, (roots, leaked, conflicted), survivors, flags)
    if matcher is not None:
        add_stored_proofs(catalog, proofs, table.shas.astype(str).tolist())
    write_clusters(catalog, table, roots, np.ones(len(table.shas), bool), leaked, flags.conflict, proofs=proofs)
    writes.mark_clustered(catalog, new, new.new)
    return True


def _index_hits(index: Any, new: HashTable, match: Match) -> tuple[np.ndarray, np.ndarray]:
    """(row of the new image, sha256 of the indexed image) of every match in the stored index."""
    import numpy as np

    found = list(index.hits(new.hashes, match.max_distance, match.margin))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, "S64")
    return np.concatenate([q for q, _ in found]).astype(np.int64), np.concatenate([s for _, s in found])


def _subset(new_shas: np.ndarray, stored: dict[bytes, _Stored], members: set[str]) -> list[str]:
    """The images a rerun reads: the new ones, the representative of every hit cluster, ``members``."""
    keys = {info.key.decode() for info in stored.values()}
    return sorted(keys | members | set(new_shas.astype(str)))


@dataclass(frozen=True)
class _Stored:
    """What the stored status of an indexed image says about its cluster."""

    key: bytes  # the representative's sha256 (the image itself when alone)
    several: bool
    leaked: bool
    conflict: bool


def _stored_clusters(catalog: Catalog, shas: np.ndarray) -> dict[bytes, _Stored]:
    """The stored cluster of each of these images, by the primary key of ``dedup_status`` (an image
    without a status, left by a crash before its statuses were written, is alone)."""
    from sqlalchemy import select

    from curation.catalog import LEAKED, DedupStatus

    stored = {sha: _Stored(sha, False, False, False) for sha in shas.tolist()}
    columns = (DedupStatus.sha256, DedupStatus.cluster_id, DedupStatus.status, DedupStatus.label_conflict)
    with catalog.session() as session:
        for part in chunks([sha.decode() for sha in shas.tolist()]):
            for sha, cluster, status, conflict in session.execute(select(*columns).where(DedupStatus.sha256.in_(part))):
                key = (cluster or sha).encode()
                stored[sha.encode()] = _Stored(key, cluster is not None, status == LEAKED, bool(conflict))
    return stored


@dataclass
class _StoredFlags:
    """Per table row, for the representatives of stored clusters: the stored cluster's flags."""

    leaked: np.ndarray  # bool
    conflict: np.ndarray  # bool
    several: np.ndarray  # bool: a stored cluster of several images

    @classmethod
    def of(cls, table: HashTable, stored: dict[bytes, _Stored]) -> _StoredFlags:
        import numpy as np

        flags = cls(*(np.zeros(len(table.shas), bool) for _ in range(3)))
        clusters = {info.key: info for info in stored.values()}
        rows = table.rows(list(clusters))
        for row, info in zip(rows.tolist(), clusters.values(), strict=True):
            if row >= 0:
                flags.leaked[row], flags.conflict[row], flags.several[row] = info.leaked, info.conflict, info.several
        return flags

    def losing_clusters(self, table: HashTable, roots: np.ndarray, survivors: dict[int, int]) -> list[str]:
        """The stored clusters of several whose representative is not its new cluster's survivor."""
        import numpy as np

        rows = np.flatnonzero(self.several)
        return [table.shas[r].decode() for r in rows.tolist() if survivors[int(roots[r])] != r]


def _spread_flags(
    catalog: Catalog,
    table: HashTable,
    clusters: tuple[np.ndarray, np.ndarray, set[int]],
    survivors: dict[int, int],
    flags: _StoredFlags,
) -> None:
    """Where a stored cluster of several keeps its representative and becomes leaked or conflicted,
    set the flag on all its members in one indexed UPDATE (those not read included). Before the
    statuses of the rows read: a crash in between leaves the representative's stored flags behind,
    so the rerun spreads them again."""
    import numpy as np
    from sqlalchemy import update

    from curation.catalog import LEAKED, DedupStatus, utcnow

    roots, leaked, conflicted = clusters  # root row of each row, leaked rows, roots of conflicted clusters
    cluster_leaked = np.zeros(len(roots), bool)
    cluster_leaked[roots[leaked]] = True
    statuses = DedupStatus.__table__
    with catalog.session() as session:
        for root, row in survivors.items():
            if not flags.several[row]:
                continue
            members = statuses.c.cluster_id == table.shas[row].decode()
            if cluster_leaked[root] and not flags.leaked[row]:
                change = update(statuses).where(members, statuses.c.status != LEAKED)
                session.execute(change.values(status=LEAKED, updated_at=utcnow()))
            if root in conflicted and not flags.conflict[row]:
                change = update(statuses).where(members, statuses.c.label_conflict.is_(False))
                session.execute(change.values(label_conflict=True, updated_at=utcnow()))


def _cluster_members(catalog: Catalog, shas: list[str]) -> set[str]:
    """Every image of the stored clusters of ``shas`` (an image alone is its own cluster), found
    through the index on ``dedup_status.cluster_id``."""
    from sqlalchemy import select

    from curation.catalog import DedupStatus

    members = set(shas)
    with catalog.session() as session:
        keys: set[str] = set()
        for part in chunks(shas):
            for sha, cluster in session.execute(
                select(DedupStatus.sha256, DedupStatus.cluster_id).where(DedupStatus.sha256.in_(part))
            ):
                keys.add(cluster or sha)
        members |= keys
        for part in chunks(sorted(keys)):
            members.update(session.scalars(select(DedupStatus.sha256).where(DedupStatus.cluster_id.in_(part))))
    return members
