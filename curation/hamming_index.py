"""Exact Hamming range search over 64-bit codes by multi-index hashing (Norouzi et al., 2012).

The 64 bits are cut into ``m`` blocks. If two codes differ in at most ``r`` bits, one of the blocks
differs in at most ``r // m`` bits (pigeonhole), so a query only has to look up, in each block's
table, the bucket of its own block value and of every value within ``r // m`` flips of it, then
check the full distance of the few codes found there. Each table is a counting sort of the codes
by block value (an ``argsort`` plus bucket offsets), so building is a few numpy passes and a query
batch is a handful of vectorised gathers: no Python loop per code or per query.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from math import comb
from pathlib import Path
from typing import Any

import numba
import numpy as np

CODE_BITS = 64
# Keys (query × flip) expanded at once; bounds the memory of one query batch to ~40 MB.
KEYS_PER_BATCH = 1_000_000
# Buckets holding more codes than this on average are read as runs by a compiled loop; smaller
# ones slot by slot with numpy.
LARGE_BUCKET = 4


MAX_BLOCK_BITS = 22  # a wider block would need a table of more than 4M buckets
# A candidate code costs about 0.4 of a table look-up (measured): candidates are read from
# contiguous buckets, look-ups are random reads.
CANDIDATE_COST = 0.4


def _keys_within(bits: int, flips: int) -> int:
    return sum(comb(bits, i) for i in range(flips + 1))


def flip_budgets(blocks: int, radius: int) -> list[int]:
    """Bits each block may differ by: with ``radius = s * blocks + a``, a pair within the radius
    differs by at most ``s`` bits in one of the first ``a + 1`` blocks or by at most ``s - 1`` in one
    of the others (otherwise it differs by at least ``(a + 1)(s + 1) + (blocks - a - 1) s > radius``).
    A budget of -1 means the block needs no look-up at all."""
    s, a = divmod(radius, blocks)
    return [s if k <= a else s - 1 for k in range(blocks)]


def _cost(widths: list[int], budgets: list[int], n_codes: int) -> float:
    """Expected look-ups plus weighted candidates per query, for uniformly spread codes."""
    return sum(
        _keys_within(bits, flips) * (1 + CANDIDATE_COST * n_codes / 2**bits)
        for bits, flips in zip(widths, budgets, strict=True)
        if flips >= 0
    )


def plan_blocks(n_codes: int, radius: int) -> list[tuple[int, int, int]]:
    """(shift, bits, flip budget) per block: the block count and widths with the least expected
    work. Widths start equal and then move one bit at a time to where it saves the most (a block
    probed with fewer flips can afford to be narrower)."""
    best: tuple[float, list[int], list[int]] | None = None
    for blocks in range(3, 9):
        budgets = flip_budgets(blocks, radius)
        widths = [CODE_BITS // blocks + (1 if i < CODE_BITS % blocks else 0) for i in range(blocks)]
        cost = _cost(widths, budgets, n_codes)
        improved = True
        while improved:
            improved = False
            for src in range(blocks):
                for dst in range(blocks):
                    if src == dst or widths[src] <= 1 or widths[dst] >= MAX_BLOCK_BITS:
                        continue
                    trial = list(widths)
                    trial[src] -= 1
                    trial[dst] += 1
                    trial_cost = _cost(trial, budgets, n_codes)
                    if trial_cost < cost - 1e-9:
                        widths, cost, improved = trial, trial_cost, True
        if best is None or cost < best[0]:
            best = (cost, widths, budgets)
    assert best is not None
    _cost_value, widths, budgets = best
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(shift), bits, flips) for shift, bits, flips in zip(shifts, widths, budgets, strict=True)]


def _mapped(path: Path) -> np.ndarray:
    """A read-only memory map of a ``.npy`` file as a plain ndarray (what the compiled scans take)."""
    return np.asarray(np.load(path, mmap_mode="r"))


def _flip_masks(bits: int, flips: int) -> np.ndarray:
    """Every ``bits``-bit value with at most ``flips`` bits set, as int32."""
    masks = [0] if flips >= 0 else []
    for k in range(1, flips + 1):
        masks.extend(sum(1 << i for i in chosen) for chosen in combinations(range(bits), k))
    return np.array(masks, dtype=np.int32)


class HammingIndex:
    """An exact range-search index over ``uint64`` codes for one maximum radius."""

    def __init__(self, codes: np.ndarray, radius: int) -> None:
        self.codes = np.ascontiguousarray(codes, dtype=np.uint64)
        if len(self.codes) >= 2**31:
            raise ValueError("at most 2**31 - 1 codes per index")
        self.radius = radius
        plan = plan_blocks(max(len(self.codes), 1), radius)
        self.blocks = [(shift, bits) for shift, bits, _flips in plan]
        self.flips = [flips for _shift, _bits, flips in plan]
        # Per block: positions sorted by block value, the codes in that order, bucket starts and
        # sizes, and the flip masks to probe.
        self._tables: list[tuple[np.ndarray, ...]] = []
        for (shift, bits), flips in zip(self.blocks, self.flips, strict=True):
            values = self._block(self.codes, shift, bits)
            order = np.argsort(values, kind="stable").astype(np.int32)
            sizes = np.bincount(values, minlength=2**bits).astype(np.int32)
            starts = np.zeros(2**bits, dtype=np.int32)
            np.cumsum(sizes[:-1], out=starts[1:])
            self._tables.append((order, self.codes[order], starts, sizes, _flip_masks(bits, flips)))

    def __len__(self) -> int:
        return len(self.codes)

    def save(self, folder: Path, prefix: str) -> dict[str, Any]:
        """Write the codes and block tables as ``.npy`` files named ``prefix...`` in ``folder``;
        returns the plan that :meth:`load` needs with them."""
        np.save(folder / f"{prefix}codes.npy", self.codes)
        for b, (order, sorted_codes, starts, sizes, _masks) in enumerate(self._tables):
            for name, array in (("order", order), ("sorted", sorted_codes), ("starts", starts), ("sizes", sizes)):
                np.save(folder / f"{prefix}{b}_{name}.npy", array)
        return {"radius": self.radius, "blocks": self.blocks, "flips": self.flips}

    @classmethod
    def load(cls, folder: Path, prefix: str, plan: dict[str, Any]) -> HammingIndex:
        """An index written by :meth:`save`, its arrays memory-mapped: a search reads only the
        buckets it probes, so opening a large index costs nothing."""
        index = cls.__new__(cls)
        index.codes = _mapped(folder / f"{prefix}codes.npy")
        index.radius = int(plan["radius"])
        index.blocks = [(int(shift), int(bits)) for shift, bits in plan["blocks"]]
        index.flips = [int(flips) for flips in plan["flips"]]
        index._tables = [
            (
                *(_mapped(folder / f"{prefix}{b}_{name}.npy") for name in ("order", "sorted", "starts", "sizes")),
                _flip_masks(bits, flips),
            )
            for b, ((_shift, bits), flips) in enumerate(zip(index.blocks, index.flips, strict=True))
        ]
        return index

    @staticmethod
    def _block(codes: np.ndarray, shift: int, bits: int) -> np.ndarray:
        return ((codes >> np.uint64(shift)) & np.uint64(2**bits - 1)).astype(np.int32)

    def search(self, queries: np.ndarray, radius: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query position, code position, distance) with distance <= ``radius`` (default: the
        index's radius, which is also the largest allowed), each pair once, sorted by query."""
        parts = list(self.iter_search(queries, radius))
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty.copy(), empty.copy()
        q, c, d = (np.concatenate(cols) for cols in zip(*parts, strict=True))
        order = np.lexsort((c, q))
        return q[order], c[order], d[order]

    def iter_search(self, queries: np.ndarray, radius: int | None = None) -> Iterator[tuple[np.ndarray, ...]]:
        """What :meth:`search` finds, one internal batch of queries at a time and unsorted: memory is
        one batch's hits (a caller that merges them as they come need not hold them all)."""
        radius = self.radius if radius is None else radius
        if radius > self.radius:
            raise ValueError(f"radius {radius} exceeds the index radius {self.radius}")
        yield from self._search_batches(np.ascontiguousarray(queries, dtype=np.uint64), radius)

    def _search_batches(self, queries: np.ndarray, radius: int) -> Iterator[tuple[np.ndarray, ...]]:
        if len(self.codes) == 0 or len(queries) == 0:
            return
        widest = max(len(table[-1]) for table in self._tables)
        batch = max(1, KEYS_PER_BATCH // widest)
        for begin in range(0, len(queries), batch):
            chunk = queries[begin : begin + batch]
            for k, ((shift, bits), table) in enumerate(zip(self.blocks, self._tables, strict=True)):
                hits = self._probe(chunk, shift, bits, table, radius)
                if hits is None:
                    continue
                owner, ids, dist, xor = hits
                # A pair is reported by the first block in which it lies within the flip budget.
                for (earlier_shift, earlier_bits), earlier_flips in zip(self.blocks[:k], self.flips[:k], strict=True):
                    later = np.bitwise_count(self._block(xor, earlier_shift, earlier_bits)) > earlier_flips
                    owner, ids, dist, xor = owner[later], ids[later], dist[later], xor[later]
                yield owner + begin, ids.astype(np.int64), dist.astype(np.int64)

    @staticmethod
    def _probe(
        chunk: np.ndarray, shift: int, bits: int, table: tuple[np.ndarray, ...], radius: int
    ) -> tuple[np.ndarray, ...] | None:
        """Codes within ``radius`` of the queries found in one block's buckets."""
        order, sorted_codes, starts, sizes, masks = table
        if len(masks) == 0:
            return None
        # Queries sorted by block value, keys laid out mask by mask: nearby table reads.
        values = HammingIndex._block(chunk, shift, bits)
        by_value = np.argsort(values)
        keys = (masks[:, None] ^ values[by_value][None, :]).ravel()
        counts = sizes[keys]
        nonempty = np.flatnonzero(counts)
        if len(nonempty) == 0:
            return None
        counts = counts[nonempty]
        position = starts[keys[nonempty]]
        owner = by_value[nonempty % len(chunk)]
        found: list[tuple[np.ndarray, ...]] = []
        if len(counts) and counts.mean() > LARGE_BUCKET:
            HammingIndex._scan_runs(counts, position, owner, chunk, order, sorted_codes, radius, found)
        else:
            HammingIndex._scan_slots(counts, position, owner, chunk[owner], order, sorted_codes, radius, found)
        if not found:
            return None
        return tuple(np.concatenate(cols) for cols in zip(*found, strict=True))

    @staticmethod
    def _scan_slots(
        counts: np.ndarray,
        position: np.ndarray,
        owner: np.ndarray,
        query: np.ndarray,
        order: np.ndarray,
        sorted_codes: np.ndarray,
        radius: int,
        found: list[tuple[np.ndarray, ...]],
    ) -> None:
        """Small buckets: walk them slot by slot, the first code of every bucket, then the second
        of those holding two or more, and so on. Finished buckets are dropped from the arrays only
        once they make up 40 % of them (until then their reads are masked out)."""
        last = len(sorted_codes) - 1
        slot = 0
        while len(position):
            at = np.minimum(position + slot, last)
            xor = sorted_codes[at] ^ query
            hit = np.flatnonzero((np.bitwise_count(xor) <= radius) & (counts > slot))
            if len(hit):
                found.append((owner[hit], order[at[hit]], np.bitwise_count(xor[hit]), xor[hit]))
            slot += 1
            more = counts > slot
            if np.count_nonzero(more) < 0.6 * len(more):
                position, counts, owner, query = position[more], counts[more], owner[more], query[more]

    @staticmethod
    def _scan_runs(
        counts: np.ndarray,
        position: np.ndarray,
        owner: np.ndarray,
        chunk: np.ndarray,
        order: np.ndarray,
        sorted_codes: np.ndarray,
        radius: int,
        found: list[tuple[np.ndarray, ...]],
    ) -> None:
        """Large buckets: read them as runs of consecutive codes (sequential reads) in one compiled
        pass that keeps only the hits (numpy would materialise every candidate several times)."""
        owner = owner.astype(np.int64)
        capacity = len(counts) + 1024  # hits are rare: far fewer than runs
        while True:
            hit_owner = np.empty(capacity, dtype=np.int64)
            hit_at = np.empty(capacity, dtype=np.int64)
            n_hits = _run_hits(counts, position, owner, chunk, sorted_codes, np.uint64(radius), hit_owner, hit_at)
            if n_hits <= capacity:
                break
            capacity = n_hits
        if n_hits:
            hit_owner, hit_at = hit_owner[:n_hits], hit_at[:n_hits]
            xor = sorted_codes[hit_at] ^ chunk[hit_owner]
            found.append((hit_owner, order[hit_at], np.bitwise_count(xor), xor))


@numba.njit(inline="always")
def _popcount(x: np.uint64) -> np.uint64:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(cache=True, nogil=True)
def _run_hits(counts, position, owner, chunk, sorted_codes, radius, hit_owner, hit_at):
    """Write (query, sorted position) of every code of the bucket runs within ``radius`` of its
    query into the buffers; returns the number of hits (more than the buffers hold: call again
    with buffers that large)."""
    n = 0
    capacity = len(hit_at)
    for i in range(len(counts)):
        query = chunk[owner[i]]
        for at in range(position[i], position[i] + counts[i]):
            if _popcount(sorted_codes[at] ^ query) <= radius:
                if n < capacity:
                    hit_owner[n] = owner[i]
                    hit_at[n] = at
                n += 1
    return n


def brute_force_search(
    codes: np.ndarray, queries: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same answer as ``HammingIndex.search`` by comparing every query with every code
    (numpy popcount): the baseline the index is measured and tested against."""
    codes = np.ascontiguousarray(codes, dtype=np.uint64)
    q_parts, c_parts, d_parts = [], [], []
    for position, query in enumerate(np.asarray(queries, dtype=np.uint64)):
        dist = np.bitwise_count(codes ^ query)
        hits = np.flatnonzero(dist <= radius)
        q_parts.append(np.full(len(hits), position, dtype=np.int64))
        c_parts.append(hits.astype(np.int64))
        d_parts.append(dist[hits].astype(np.int64))
    if not q_parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    return np.concatenate(q_parts), np.concatenate(c_parts), np.concatenate(d_parts)
