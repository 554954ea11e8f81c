"""Near-duplicate matching streamed into a union-find over integer ids, all in numpy arrays.

Matches are never collected: each query batch's (query, item) pairs are filtered by the dHash
threshold and merged into the union-find at once, so memory is the index, the parent array and one
batch of hits. Exact copies (equal hashes in every orientation) are merged before matching and only
one row of each is queried and indexed, so a cluster of n reposts of one photo costs O(n), not n².
The query batch adapts to the hits it yields (a batch of near-copies that all match each other holds
batch × cluster hits): it halves above ``HITS_PER_BATCH`` and doubles below half of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np

from curation.hamming_index import HammingIndex

# Hits (query, item) held at once: ~40 bytes each in the index's search, so about 40 MB a batch.
HITS_PER_BATCH = 1_000_000
FIRST_BATCH, MIN_BATCH, MAX_BATCH = 256, 16, 65_536


@numba.njit(cache=True, nogil=True)
def _root(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]  # path halving
        x = parent[x]
    return x


@numba.njit(cache=True, nogil=True)
def _union_pairs(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    for i in range(len(a)):
        ra, rb = _root(parent, a[i]), _root(parent, b[i])
        if ra < rb:
            parent[rb] = ra
        elif rb < ra:
            parent[ra] = rb


@numba.njit(cache=True, nogil=True)
def _all_roots(parent: np.ndarray) -> np.ndarray:
    roots = np.empty_like(parent)
    for x in range(len(parent)):
        roots[x] = _root(parent, x)
    return roots


class UnionFind:
    """Disjoint sets over ``0..n-1`` in one int64 array; each set's root is its smallest member."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge the sets of ``a[i]`` and ``b[i]`` for every i."""
        _union_pairs(self.parent, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))

    def roots(self) -> np.ndarray:
        """The root of every element."""
        return _all_roots(self.parent)


@dataclass
class Matches:
    """One batch of matches: query and item positions, pHash distance, query orientation (0..k-1)."""

    query: np.ndarray
    item: np.ndarray
    distance: np.ndarray
    orientation: np.ndarray


def iter_matches(
    query_hashes: np.ndarray,
    index: HammingIndex,
    index_dhash: np.ndarray,
    max_distance: int,
    margin: int,
    orientations: range | None = None,
) -> Iterator[Matches]:
    """Every (query, item) within the thresholds in an orientation of the query, batch by batch (a
    pair can come once per orientation that matches). ``query_hashes`` is (n, 2k) uint64: (pHash,
    dHash) of k orientations of :data:`curation.hashing.ORIENTATIONS`; ``orientations`` picks some."""
    k_all = range(query_hashes.shape[1] // 2) if orientations is None else orientations
    for k in k_all:
        p_col, d_col = query_hashes[:, 2 * k], query_hashes[:, 2 * k + 1]
        begin, batch = 0, FIRST_BATCH
        while begin < len(query_hashes):
            hits = 0
            for q, c, dist in index.iter_search(p_col[begin : begin + batch]):
                hits += len(q)
                keep = np.bitwise_count(d_col[begin + q] ^ index_dhash[c]) <= max_distance + margin
                if keep.any():
                    q, c, dist = q[keep] + begin, c[keep], dist[keep]
                    yield Matches(q, c, dist, np.full(len(q), k, dtype=np.int8))
            begin += batch
            if hits > HITS_PER_BATCH:
                batch = max(MIN_BATCH, batch // 2)
            elif hits < HITS_PER_BATCH // 2:
                batch = min(MAX_BATCH, batch * 2)


def collapse_copies(hashes: np.ndarray, uf: UnionFind) -> tuple[np.ndarray, np.ndarray]:
    """Merge rows with equal hashes in every orientation. Returns ``distinct``: the position of the
    first row of each distinct hash row, in row order, and ``row_of``: each row's place in it."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _rows, first, inverse = np.unique(hashes, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    row_of = rank[inverse.ravel()].astype(np.int64)
    distinct = first[order].astype(np.int64)
    uf.union(np.arange(len(hashes)), distinct[row_of])
    return distinct, row_of


def merge_matches(
    hashes: np.ndarray,
    uf: UnionFind,
    max_distance: int,
    margin: int,
    new: np.ndarray | None = None,
) -> None:
    """Merge every near-duplicate pair of rows of ``hashes`` into ``uf``. With ``new`` (row positions),
    only pairs that involve a new row: those rows queried in every orientation against all rows, and
    all rows queried in their other orientations against the new rows (the match rule compares an
    orientation of the query with the plain hashes of the item, so it is not symmetric)."""
    distinct, row_of = collapse_copies(hashes, uf)
    rows = hashes[distinct]
    everything = HammingIndex(rows[:, 0], max_distance)
    queried = np.arange(len(distinct)) if new is None else np.unique(row_of[new])
    for found in iter_matches(rows[queried], everything, rows[:, 1], max_distance, margin):
        own = queried[found.query] != found.item
        uf.union(distinct[queried[found.query[own]]], distinct[found.item[own]])
    if new is None or len(queried) == 0 or rows.shape[1] <= 2:
        return
    fresh = rows[queried]
    against_new = HammingIndex(fresh[:, 0], max_distance)
    others = range(1, rows.shape[1] // 2)
    for found in iter_matches(rows, against_new, fresh[:, 1], max_distance, margin, others):
        own = found.query != queried[found.item]
        uf.union(distinct[found.query[own]], distinct[queried[found.item[own]]])
