"""The persisted index of every clustered image's hashes, so that a dedup rerun reads only what it
needs: the new images are searched in it, and only the clusters they hit are read from the catalog.

The index is a list of immutable segments (log-structured, like an LSM tree): each run adds one
segment with the hashes of the images it clustered, and merges it into the previous one while that
is at most ``MERGE_RATIO`` times larger, so there are O(log n) segments and each hash is rewritten
O(log n) times in all. A segment is a folder under ``DATA_DIR/dedup/index/`` holding, per distinct
hash row (exact copies share one), one sha256, the hashes of every orientation, and one
:class:`~curation.hamming_index.HammingIndex` per orientation's pHash, all ``.npy`` files that are
memory-mapped on open: a search reads only the buckets it probes.

The catalog stays the single source of truth: it names the segments in force (``catalog_meta``
key ``dedup:index``, with the match rule they were built for). Segments are written before the
catalog names them and the statuses of their images are written after, so every image with a
status is in the index; a missing or foreign segment makes the caller rebuild the index from the
catalog. A hit on an image that is no longer clustered costs one look-up and changes nothing.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from curation.hamming_index import HammingIndex
from curation.near_duplicates import iter_matches

if TYPE_CHECKING:
    from curation.catalog import Catalog

INDEX_META = "dedup:index"
# A segment is merged into the one before it while that one holds at most this many times its rows:
# segment sizes then at least double from newest to oldest (O(log n) segments).
MERGE_RATIO = 2


def index_dir(data_dir: Path) -> Path:
    return data_dir / "dedup" / "index"


@dataclass
class Segment:
    """One immutable folder of the index."""

    name: str
    shas: np.ndarray  # S64: one image per distinct hash row
    hashes: np.ndarray  # (rows, 2 * orientations) uint64: (pHash, dHash) per orientation
    indexes: list[HammingIndex]  # over the pHash of each orientation

    def __len__(self) -> int:
        return len(self.shas)


def _write_segment(root: Path, shas: np.ndarray, hashes: np.ndarray, radius: int) -> Segment:
    """A new segment of the distinct hash rows of (shas, hashes)."""
    _unique, first = np.unique(hashes, axis=0, return_index=True)
    first = np.sort(first)
    shas, hashes = np.ascontiguousarray(shas[first]), np.ascontiguousarray(hashes[first])
    name = uuid.uuid4().hex
    folder = root / name
    folder.mkdir(parents=True)
    np.save(folder / "shas.npy", shas)
    np.save(folder / "hashes.npy", hashes)
    indexes = [HammingIndex(hashes[:, 2 * k], radius) for k in range(hashes.shape[1] // 2)]
    plans = [index.save(folder, f"o{k}_") for k, index in enumerate(indexes)]
    (folder / "plans.json").write_text(json.dumps(plans))
    return Segment(name, shas, hashes, indexes)


def _open_segment(root: Path, name: str, rows: int, columns: int) -> Segment | None:
    folder = root / name
    try:
        shas = np.load(folder / "shas.npy", mmap_mode="r")
        hashes = np.load(folder / "hashes.npy", mmap_mode="r")
        plans = json.loads((folder / "plans.json").read_text())
        if len(shas) != rows or hashes.shape != (rows, columns) or len(plans) != columns // 2:
            return None
        indexes = [HammingIndex.load(folder, f"o{k}_", plan) for k, plan in enumerate(plans)]
    except (OSError, ValueError, KeyError):
        return None
    return Segment(name, np.asarray(shas), np.asarray(hashes), indexes)


class StoredIndex:
    """The segments the catalog names, for one match rule."""

    def __init__(self, data_dir: Path, rule: str, radius: int, segments: list[Segment]) -> None:
        self.root = index_dir(data_dir)
        self.rule = rule
        self.radius = radius
        self.segments = segments
        self.superseded: set[str] = set()  # folders to delete once the catalog no longer names them

    @classmethod
    def open(cls, catalog: Catalog, data_dir: Path, rule: str, radius: int, columns: int) -> StoredIndex | None:
        """The index the catalog names, if it was built for ``rule`` and all its segments are on
        disk; None otherwise (the caller rebuilds it)."""
        from curation.catalog import Meta

        with catalog.session() as session:
            stored = session.get(Meta, INDEX_META)
        if stored is None:
            return None
        try:
            state = json.loads(stored.value)
        except ValueError:
            return None
        if state.get("rule") != rule:
            return None
        segments = []
        for entry in state.get("segments", []):
            segment = _open_segment(index_dir(data_dir), entry["name"], entry["rows"], columns)
            if segment is None:
                return None
            segments.append(segment)
        return cls(data_dir, rule, radius, segments)

    @classmethod
    def empty(cls, catalog: Catalog, data_dir: Path, rule: str, radius: int) -> StoredIndex:
        """A new, empty index that replaces the one the catalog names (if any) on :meth:`commit`."""
        from curation.catalog import Meta

        index = cls(data_dir, rule, radius, [])
        with catalog.session() as session:
            stored = session.get(Meta, INDEX_META)
        try:
            state = json.loads(stored.value) if stored is not None else {}
            index.superseded = {str(entry["name"]) for entry in state.get("segments", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        return index

    def __len__(self) -> int:
        return sum(len(segment) for segment in self.segments)

    def hits(self, query_hashes: np.ndarray, max_distance: int, margin: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(query rows, indexed sha256s) of every indexed image that is a near-duplicate of a query
        under the rule, in either direction: an orientation of the query against the plain hashes of
        the indexed image, and the plain hashes of the query against its other orientations."""
        for segment in self.segments:
            plain = segment.indexes[0]
            for found in iter_matches(query_hashes, plain, segment.hashes[:, 1], max_distance, margin):
                yield found.query, segment.shas[found.item]
            for k in range(1, len(segment.indexes)):
                dhash = segment.hashes[:, 2 * k + 1]
                for found in iter_matches(query_hashes[:, :2], segment.indexes[k], dhash, max_distance, margin):
                    yield found.query, segment.shas[found.item]

    def add(self, shas: np.ndarray, hashes: np.ndarray) -> None:
        """Write a segment of these rows and merge it into the newest ones while they are not more
        than ``MERGE_RATIO`` times larger (written, not yet named by the catalog: see :meth:`commit`)."""
        if len(shas) == 0:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.segments.append(_write_segment(self.root, shas, hashes, self.radius))
        while len(self.segments) >= 2 and len(self.segments[-2]) <= MERGE_RATIO * len(self.segments[-1]):
            older, newer = self.segments[-2], self.segments.pop()
            merged_shas = np.concatenate([older.shas, newer.shas])
            merged = _write_segment(self.root, merged_shas, np.concatenate([older.hashes, newer.hashes]), self.radius)
            self.segments[-1] = merged
            self.superseded |= {older.name, newer.name}

    def commit(self, catalog: Catalog) -> None:
        """Name the segments in the catalog, then delete the folders of those it named before and
        no longer does (a crash in between leaves unnamed folders, never a named one missing)."""
        from curation.catalog import Meta

        state = {"rule": self.rule, "segments": [{"name": s.name, "rows": len(s)} for s in self.segments]}
        with catalog.session() as session:
            session.merge(Meta(key=INDEX_META, value=json.dumps(state)))
        for name in self.superseded - {segment.name for segment in self.segments}:
            shutil.rmtree(self.root / name, ignore_errors=True)
        self.superseded = set()
