"""The embedding matcher: each image's top-k embedding neighbours among the catalog and each reference
set are proposals, and only a proposal the geometric verifier (:mod:`curation.dedup.verify`) proves
becomes a link. Proposals it scores in the band below its threshold (or cannot decide: too few
keypoints, no decode) become ``possible_copies`` rows for review; refused ones leave nothing.

A query proposes by its whole image's embedding and by its nine tiles' (:mod:`curation.dedup.tiles`:
collages, heavy crops). Catalog images are read through the image store (refs from ``[storage]
images``: a local run's driver fetches the bytes its forked workers verify, a cluster's workers read
the refs themselves); reference sets are local folders.

The matcher only proposes and proves: clustering (the proved crawl pairs are union-find links beside
the hash matches), survivors, leak flags, the stored index and the catalog writes stay shared.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from curation.dedup.config import EmbeddingSpec
from curation.dedup.embeddings import Embedder, ensure_features, open_embedder
from curation.dedup.hash_table import chunks
from curation.dedup.keypoints import TILES
from curation.dedup.ref_index import exact_top_k, normalise
from curation.dedup.tiles import TILE_EXTRA, TILE_TOP_K, tile_vectors, with_tiles
from curation.dedup.writes import EMBED_KIND
from curation.store.reader import ImageReader, ImageRef, local_reader

if TYPE_CHECKING:
    from curation.catalog import Catalog
    from curation.engine import Executor

KIND = EMBED_KIND  # how a proved link was found and proved: an embedding proposal, ORB + RANSAC
VERIFY_BATCH = 4  # queries (each with its proposals) per verification task: ~1-2 s of work
# Queries whose images a local run fetches at once for its forked workers: at most 32 x 29 images
# (~90 MB of 100 KB photos) held while they verify.
VERIFY_PAGE = 32


class VerifyTask:
    """Verifies a batch of (query key, query image, [(candidate key, image, cosine), ...]) on a
    worker: one record (query, candidate, cosine, kind, inliers, score, reason) per proposal. An image
    is a store ref (read here, a cluster's node reading with its own credentials), the bytes the
    driver fetched for forked workers, or a reference set's local path. Each image's keypoints are
    extracted once per batch."""

    resource = "cpu"

    def setup(self) -> None:
        pass

    def run(self, batch: list[tuple[str, Any, list[tuple[str, Any, float]]]]) -> list[tuple]:
        from curation.dedup.keypoints import ImageFeatures, extract
        from curation.dedup.verify import verify
        from curation.store.reader import fetch_sources

        images = {query: item for query, item, _ in batch}
        images.update({other: item for _, _, found in batch for other, item, _ in found})
        features = {}
        for key, source in zip(images, fetch_sources(images.values()), strict=True):
            missing = isinstance(source, Exception)
            reason = f"did not decode for ORB: {type(source).__name__}: {source}"[:200] if missing else ""
            features[key] = ImageFeatures((0, 0), error=reason) if missing else extract(source)
        records = []
        for query, _, proposals in batch:
            for other, _, cosine in proposals:
                result = verify(features[query], features[other])
                records.append((query, other, cosine, result.kind, result.inliers, result.score, result.reason))
        return records


@dataclass
class EmbeddingResult:
    """What the matcher proved and left for review in one run."""

    edges: list[tuple[str, str]] = field(default_factory=list)  # proved crawl pairs (sha, sha)
    proofs: dict[str, tuple[int, float]] = field(default_factory=dict)  # crawl image -> (inliers, score)
    reference_links: dict[str, list[dict]] = field(default_factory=dict)  # set -> duplicate_links rows
    possible: list[dict] = field(default_factory=list)  # possible_copies rows
    proposals: int = 0
    undecodable: int = 0  # proposals an image of which did not decode for ORB (to review, never links)
    first_undecodable: tuple[str, str, str | None, str] | None = None  # (query, other, set, reason)


class EmbeddingMatcher:
    """Proposes by embedding (the whole image and its tiles: :mod:`curation.dedup.tiles`), proves by
    geometric verification (see the module docstring)."""

    name = "embedding"

    def __init__(
        self,
        catalog: Catalog,
        data_dir: Path,
        spec: EmbeddingSpec,
        executor: Executor | None,
        workers: int,
        images: ImageReader | None = None,
    ) -> None:
        self.catalog, self.data_dir, self.spec = catalog, Path(data_dir), spec
        self.executor, self.workers = executor, workers
        self.images = images or local_reader(self.data_dir)
        self.embedder: Embedder = open_embedder(catalog, spec)
        self.embedded_now = 0
        self.unreadable = 0

    @property
    def label(self) -> str:
        return (
            f"embedding {self.embedder.label}, top {self.spec.top_k} (+{TILE_EXTRA} by {len(TILES)} tiles) "
            f">= cos {self.spec.cos_floor}, verified by ORB"
        )

    def run(self, crawl_queries: list[str], references: dict[str, tuple[Any, list[str]]]) -> EmbeddingResult:
        """Search ``crawl_queries`` among the catalog's embedded images and each reference set's
        ``(index, queried sha256s)``, verify every proposal and return what was proved."""
        wanted = sorted(set(crawl_queries).union(*(q for _, q in references.values())))
        refs = image_refs(self.catalog, self.images, wanted)
        store, computed, failed = ensure_features(
            self.catalog, self.data_dir, self.embedder, sorted(refs.items()), self.executor
        )
        good = [(sha, refs[sha]) for sha in wanted if sha in refs and sha not in failed]
        tiles, _, tiles_failed = ensure_features(
            self.catalog, self.data_dir, self.embedder, good, self.executor, desc="embedding tiles", tiles=True
        )
        failed = {**tiles_failed, **failed}
        self.embedded_now += computed
        self.unreadable += len(failed)
        result = EmbeddingResult()
        work: dict[str | None, dict[str, list[tuple[str, Any, float]]]] = {}
        queries = [sha for sha in crawl_queries if sha in refs and sha not in failed]
        if queries:
            work[None] = self._crawl_proposals(store, tiles, queries, refs)
        for name, (index, shas) in references.items():
            mine = [sha for sha in shas if sha in refs and sha not in failed]
            if index is not None and mine:
                work[name] = self._reference_proposals(store, tiles, index, mine)
        for name, proposals in work.items():
            self._verify(name, proposals, refs, result)
        return result

    def _queries(self, store: Any, tiles: Any, queries: list[str]) -> np.ndarray:
        """The queries' whole-image vectors, then their tiles' (9 rows a query; a missing tile row
        is zero, below any floor), L2-normalised."""
        _, vectors = store.get(queries)
        _, tile_rows = tile_vectors(tiles, queries)
        return normalise(np.concatenate([vectors, tile_rows]))

    def _merged(self, sha: str, q: int, n: int, neighbours: Any) -> list[tuple[str, float]]:
        """Query ``q``'s proposals (of ``n`` queries): the whole image's top-k and its tiles' top
        :data:`TILE_TOP_K` at or above the floor, merged by :func:`with_tiles`; ``neighbours(row)``:
        that query row's (key, cosine) best first."""

        def best(row: int, limit: int) -> list[tuple[str, float]]:
            found = [(o, c) for o, c in neighbours(row) if o != sha and c >= self.spec.cos_floor]
            return found[:limit]

        tiles = [hit for t in range(len(TILES)) for hit in best(n + len(TILES) * q + t, TILE_TOP_K)]
        return with_tiles(best(q, self.spec.top_k), tiles)

    def _crawl_proposals(self, store: Any, tiles: Any, queries: list[str], refs: dict[str, Any]) -> dict:
        """Each query's proposals among the other catalog images (hashed ones); a pair is proposed once."""
        keys, rows, cosines = store_top_k(
            store, self._queries(store, tiles, queries), max(self.spec.top_k, TILE_TOP_K) + 1
        )

        def neighbours(row: int) -> list[tuple[str, float]]:
            pairs = zip(rows[row].tolist(), cosines[row].tolist(), strict=True)
            return [(keys[r].decode(), c) for r, c in pairs if r >= 0]

        merged = {sha: self._merged(sha, q, len(queries), neighbours) for q, sha in enumerate(queries)}
        candidates = {other for found in merged.values() for other, _ in found}
        refs.update(image_refs(self.catalog, self.images, sorted(candidates - set(refs))))
        proposed: dict[str, list[tuple[str, Any, float]]] = {}
        seen: set[tuple[str, str]] = set()
        for sha, found in merged.items():
            for other, cos in found:
                pair = (min(sha, other), max(sha, other))
                if other in refs and pair not in seen:
                    seen.add(pair)
                    proposed.setdefault(sha, []).append((other, refs[other], cos))
        return proposed

    def _reference_proposals(self, store: Any, tiles: Any, index: Any, queries: list[str]) -> dict:
        rows, cosines = index.search(self._queries(store, tiles, queries), max(self.spec.top_k, TILE_TOP_K))

        def neighbours(row: int) -> list[tuple[str, float]]:
            pairs = zip(rows[row].tolist(), cosines[row].tolist(), strict=True)
            return [(index.keys[r].decode("utf-8", "replace"), c) for r, c in pairs if r >= 0]

        proposed: dict[str, list[tuple[str, Any, float]]] = {}
        for q, sha in enumerate(queries):
            for key, cos in self._merged(sha, q, len(queries), neighbours):
                proposed.setdefault(sha, []).append((key, str(index.base / key), cos))
        return proposed

    def _verify(self, name: str | None, proposals: dict, refs: dict[str, Any], result: EmbeddingResult) -> None:
        """Verify the proposals of one target (the crawl: None, or a set) on the executor's workers,
        :data:`VERIFY_PAGE` queries at a time; forked local workers get the images' bytes, fetched
        here (obstore is not fork-safe), a cluster's workers the refs."""
        from tqdm import tqdm

        from curation.engine.local import LocalExecutor

        items = [(sha, refs[sha], found) for sha, found in sorted(proposals.items())]
        total = sum(len(found) for _, _, found in items)
        result.proposals += total
        executor = self.executor or LocalExecutor()
        workers = max(1, self.workers)
        desc = f"verifying {name or 'crawl'} proposals"
        with tqdm(total=total, desc=desc, unit="pair", file=sys.stderr, leave=False) as bar:
            for start in range(0, len(items), VERIFY_PAGE):
                page = items[start : start + VERIFY_PAGE]
                if executor.name == "local":
                    page = fetched(page)
                for record in executor.map(VerifyTask(), page, batch_size=VERIFY_BATCH, workers=workers):
                    bar.update()
                    self._record(name, record, result)

    def _record(self, name: str | None, record: tuple, result: EmbeddingResult) -> None:
        """One verified proposal into ``result``: a proved link, a band row, or nothing."""
        sha, other, cosine, kind, inliers, score, reason = record
        if "decode" in reason:
            result.undecodable += 1
            result.first_undecodable = result.first_undecodable or (sha, other, name, reason)
        if kind == "copy" and name is None:
            result.edges.append((sha, other))
            for end in (sha, other):
                if score > result.proofs.get(end, (0, -1.0))[1]:
                    result.proofs[end] = (inliers, score)
        elif kind == "copy":
            row = {"sha256": sha, "other": other, "reference": name, "hash_kind": KIND, "distance": inliers}
            result.reference_links.setdefault(name, []).append({**row, "score": score})
        elif kind == "band":
            why = "embed+orb:" + (
                "no-decode" if "decode" in reason else "few-keypoints" if "keypoint" in reason else "band"
            )
            row = {"sha256": sha, "other": other, "reference": name, "kind": why[:32], "score": score}
            result.possible.append({**row, "cosine": float(cosine)})


def fetched(page: list[tuple[str, Any, list[tuple[str, Any, float]]]]) -> list[tuple]:
    """``page`` with each stored image (a ref) replaced by its bytes (or the MissingObject of one
    not in the store), fetched many at once in this process, each image once."""
    from curation.store.reader import ImageRef, fetch_sources

    wanted = list(dict.fromkeys(item for _, query, found in page for item in (query, *(i for _, i, _ in found))))
    wanted = [item for item in wanted if isinstance(item, ImageRef)]
    sources = dict(zip(wanted, fetch_sources(wanted), strict=True))
    return [
        (sha, sources.get(query, query), [(other, sources.get(item, item), cos) for other, item, cos in found])
        for sha, query, found in page
    ]


def store_top_k(store: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, rows into keys, cosines) of each query's top ``k`` among every stored vector, read one
    memory-mapped segment at a time (an exact scan: O(new x catalog))."""
    keys_parts, rows_parts, cos_parts, offset = [], [], [], 0
    for seg_keys, seg_vectors in store.segments():
        rows, cosines = exact_top_k(queries, seg_vectors, min(k, len(seg_keys)))
        keys_parts.append(seg_keys)
        rows_parts.append(rows + offset)
        cos_parts.append(cosines)
        offset += len(seg_keys)
    if not keys_parts:
        return np.zeros(0, "S64"), np.full((len(queries), 0), -1), np.zeros((len(queries), 0))
    rows, cosines = np.concatenate(rows_parts, axis=1), np.concatenate(cos_parts, axis=1)
    order = np.argsort(-cosines, axis=1, kind="stable")[:, :k]
    return np.concatenate(keys_parts), np.take_along_axis(rows, order, 1), np.take_along_axis(cosines, order, 1)


def image_refs(catalog: Catalog, images: ImageReader, shas: list[str]) -> dict[str, ImageRef]:
    """The stored image of each hashed image among ``shas`` (others are left out)."""
    from sqlalchemy import select

    from curation.catalog import Image, PerceptualHash

    found: dict[str, ImageRef] = {}
    with catalog.session() as session:
        for part in chunks(shas):
            stmt = select(Image.sha256, Image.path).join(PerceptualHash, PerceptualHash.sha256 == Image.sha256)
            for sha, path in session.execute(stmt.where(Image.sha256.in_(part))):
                found[sha] = images.ref(path)
    return found


def write_possible(catalog: Catalog, queried: dict[str | None, list[str]], rows: list[dict]) -> None:
    """Replace the possible copies of the queried images, per target (None: the crawl; else a set)."""
    from sqlalchemy import delete, insert

    from curation.catalog import PossibleCopy, utcnow

    with catalog.session() as session:
        for name, shas in queried.items():
            target = PossibleCopy.reference.is_(None) if name is None else PossibleCopy.reference == name
            for part in chunks(sorted(shas)):
                session.execute(delete(PossibleCopy).where(target, PossibleCopy.sha256.in_(part)))
        unique = {(r["sha256"], r["other"], r["reference"]): r for r in rows}
        if unique:
            session.execute(insert(PossibleCopy).values(created_at=utcnow()), list(unique.values()))
