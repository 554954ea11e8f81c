"""Hash rows read from the catalog into numpy arrays in sha256 order, and their clusters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from curation.catalog import Catalog


LOAD_BLOCK = 10_000  # hash rows read and turned into arrays at a time


NEW_ONLY = object()  # load_table's subset: the images new to dedup


@dataclass
class HashTable:
    """Hashed images in sha256 order (an image's id is its row): hashes of the queried orientations,
    whether it is new to dedup (not clustered yet), the row of its stored cluster's representative,
    and how often the crawl had found it again when it was read."""

    shas: np.ndarray  # S64: hex sha256
    hashes: np.ndarray  # (n, 2 * orientations) uint64
    new: np.ndarray  # bool: not clustered yet
    stored_cluster: np.ndarray  # int64 row, -1 when none
    refound: np.ndarray  # int64: perceptual_hashes.refound as read

    def rows(self, shas: Any) -> np.ndarray:
        """The row of each hex sha256 (str or bytes), -1 for those not in the table."""
        import numpy as np

        wanted = np.array(shas, dtype="S64")
        if not len(self.shas):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.shas, wanted), len(self.shas) - 1).astype(np.int64)
        return np.where(self.shas[at] == wanted, at, -1)


def load_table(catalog: Catalog, orientations: int, full: bool, subset: Any = None) -> HashTable:
    """Stream hash rows into numpy arrays, a block of rows at a time (~0.2 KB an image with 2
    orientations; no per-image Python object outlives its block): every row, the rows new to dedup
    (``subset=NEW_ONLY``: not clustered yet) or those of a list of sha256s."""
    import numpy as np
    from sqlalchemy import select

    from curation.catalog import DedupStatus, PerceptualHash
    from curation.hashing import ImageHashes, to_unsigned, unpack_extra

    columns = [PerceptualHash.phash, PerceptualHash.dhash, PerceptualHash.phash_mirror, PerceptualHash.dhash_mirror]
    extra = [PerceptualHash.orientation_hashes] if orientations > 2 else []
    head = (PerceptualHash.sha256, PerceptualHash.clustered, DedupStatus.cluster_id, PerceptualHash.refound)
    stmt = select(*head, *columns, *extra).outerjoin(DedupStatus, DedupStatus.sha256 == PerceptualHash.sha256)
    if subset is NEW_ONLY:  # through the partial index on the unclustered rows
        statements = [stmt.where(PerceptualHash.clustered.is_(False))]
    elif subset is not None:
        statements = [stmt.where(PerceptualHash.sha256.in_(part)) for part in chunks(list(subset))]
    else:
        statements = [stmt]
    empty = (
        np.zeros(0, "S64"),
        np.zeros((0, 2 * orientations), np.uint64),
        np.zeros(0, bool),
        np.zeros(0, "S64"),
        np.zeros(0, np.int64),
    )
    blocks: list[tuple[np.ndarray, ...]] = [empty]
    with catalog.session() as session:
        for statement in statements:
            for part in session.execute(statement.execution_options(yield_per=LOAD_BLOCK)).partitions():
                hashes = [
                    ImageHashes(
                        *(to_unsigned(v) for v in row[4:8]), extra=unpack_extra(row[8]) if extra else ()
                    ).orientation_row()[: 2 * orientations]
                    for row in part
                ]
                blocks.append(
                    (
                        np.array([row[0] for row in part], dtype="S64"),
                        np.array(hashes, dtype=np.uint64).reshape(-1, 2 * orientations),
                        np.array([not row[1] for row in part], dtype=bool),
                        np.array([row[2] or "" for row in part], dtype="S64"),
                        np.array([row[3] for row in part], dtype=np.int64),
                    )
                )
    shas, hashes, new, cluster_ids, refound = (np.concatenate(column) for column in zip(*blocks, strict=True))
    order = np.argsort(shas, kind="stable")
    table = HashTable(shas[order], hashes[order], new[order], np.full(len(shas), -1, dtype=np.int64), refound[order])
    if not full:
        cluster_ids = cluster_ids[order]
        members = np.flatnonzero(cluster_ids != b"")
        table.stored_cluster[members] = table.rows(cluster_ids[members])
    return table


def chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def cluster(
    table: HashTable, max_distance: int, margin: int, full: bool, links: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """The root row of every row's cluster: the stored clusters (unless ``full``) merged with the
    matches of the new rows and with ``links`` (pairs of rows found matching elsewhere), or every
    row matched against all."""
    import numpy as np

    from curation.near_duplicates import UnionFind, merge_matches

    uf = UnionFind(len(table.shas))
    if not full:
        stored = np.flatnonzero(table.stored_cluster >= 0)
        uf.union(stored, table.stored_cluster[stored])
    new = None if full else np.flatnonzero(table.new)
    if full or len(new):
        merge_matches(table.hashes, uf, max_distance, margin, new)
    if links is not None:
        uf.union(*links)
    return uf.roots()
