"""The embedding matcher: each image's top-k embedding neighbours among the catalog and each reference
set are proposals, and only a proposal the geometric verifier (:mod:`curation.dedup.verify`) proves
becomes a link. Proposals it scores in the band below its threshold (or cannot decide: too few
keypoints, no decode) become ``possible_copies`` rows for review; refused ones leave nothing.

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
from curation.dedup.ref_index import exact_top_k, normalise
from curation.dedup.writes import EMBED_KIND

if TYPE_CHECKING:
    from curation.catalog import Catalog
    from curation.engine import Executor

KIND = EMBED_KIND  # how a proved link was found and proved: an embedding proposal, ORB + RANSAC
VERIFY_BATCH = 4  # queries (each with its proposals) per verification task: ~1-2 s of work


class VerifyTask:
    """Verifies a batch of (query key, query path, [(candidate key, path, cosine), ...]) on a worker:
    one record (query, candidate, cosine, kind, inliers, score, reason) per proposal. Each image's
    keypoints are extracted once per batch."""

    resource = "cpu"

    def setup(self) -> None:
        pass

    def run(self, batch: list[tuple[str, str, list[tuple[str, str, float]]]]) -> list[tuple]:
        from curation.dedup.keypoints import extract
        from curation.dedup.verify import verify

        cache: dict[str, Any] = {}

        def features(path: str) -> Any:
            if path not in cache:
                cache[path] = extract(path)
            return cache[path]

        records = []
        for query, query_path, proposals in batch:
            for other, other_path, cosine in proposals:
                result = verify(features(query_path), features(other_path))
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
    undecodable: int = 0


class EmbeddingMatcher:
    """Proposes by embedding, proves by geometric verification (see the module docstring)."""

    name = "embedding"

    def __init__(
        self, catalog: Catalog, data_dir: Path, spec: EmbeddingSpec, executor: Executor | None, workers: int
    ) -> None:
        self.catalog, self.data_dir, self.spec = catalog, Path(data_dir), spec
        self.executor, self.workers = executor, workers
        self.embedder: Embedder = open_embedder(catalog, spec)
        self.embedded_now = 0
        self.unreadable = 0

    @property
    def label(self) -> str:
        return f"embedding {self.embedder.label}, top {self.spec.top_k} >= cos {self.spec.cos_floor}, verified by ORB"

    def run(self, crawl_queries: list[str], references: dict[str, tuple[Any, list[str]]]) -> EmbeddingResult:
        """Search ``crawl_queries`` among the catalog's embedded images and each reference set's
        ``(index, queried sha256s)``, verify every proposal and return what was proved."""
        paths = image_paths(
            self.catalog, self.data_dir, sorted(set(crawl_queries).union(*(q for _, q in references.values())))
        )
        store, computed, failed = ensure_features(
            self.catalog, self.data_dir, self.embedder, sorted(paths.items()), self.executor
        )
        self.embedded_now += computed
        self.unreadable += len(failed)
        result = EmbeddingResult()
        work: dict[str | None, dict[str, list[tuple[str, str, float]]]] = {}
        queries = [sha for sha in crawl_queries if sha in paths and sha not in failed]
        if queries:
            work[None] = self._crawl_proposals(store, queries, paths)
        for name, (index, shas) in references.items():
            mine = [sha for sha in shas if sha in paths and sha not in failed]
            if index is not None and mine:
                work[name] = self._reference_proposals(store, index, mine, paths)
        for name, proposals in work.items():
            self._verify(name, proposals, paths, result)
        return result

    def _crawl_proposals(self, store: Any, queries: list[str], paths: dict[str, str]) -> dict:
        """Each query's top-k other catalog images (hashed ones) at or above the cosine floor; a pair
        is proposed once."""
        _, vectors = store.get(queries)
        vectors = normalise(vectors)
        keys, rows, cosines = store_top_k(store, vectors, self.spec.top_k + 1)
        proposed: dict[str, list[tuple[str, str, float]]] = {}
        seen: set[tuple[str, str]] = set()
        candidates = [keys[r].decode() for r in np.unique(rows[rows >= 0]).tolist()]
        paths.update(image_paths(self.catalog, self.data_dir, [c for c in candidates if c not in paths]))
        for q, sha in enumerate(queries):
            for r, cos in zip(rows[q].tolist(), cosines[q].tolist(), strict=True):
                other = keys[r].decode() if r >= 0 else None
                pair = tuple(sorted((sha, other))) if other else None
                if other is None or other == sha or cos < self.spec.cos_floor or other not in paths or pair in seen:
                    continue
                seen.add(pair)
                proposed.setdefault(sha, []).append((other, paths[other], cos))
        return proposed

    def _reference_proposals(self, store: Any, index: Any, queries: list[str], paths: dict[str, str]) -> dict:
        _, vectors = store.get(queries)
        rows, cosines = index.search(vectors, self.spec.top_k)
        proposed: dict[str, list[tuple[str, str, float]]] = {}
        for q, sha in enumerate(queries):
            for r, cos in zip(rows[q].tolist(), cosines[q].tolist(), strict=True):
                if r >= 0 and cos >= self.spec.cos_floor:
                    key = index.keys[r].decode("utf-8", "replace")
                    proposed.setdefault(sha, []).append((key, str(index.base / key), cos))
        return proposed

    def _verify(self, name: str | None, proposals: dict, paths: dict[str, str], result: EmbeddingResult) -> None:
        """Verify the proposals of one target (the crawl: None, or a set) on the executor's workers."""
        from tqdm import tqdm

        from curation.engine.local import LocalExecutor

        items = [(sha, paths[sha], found) for sha, found in sorted(proposals.items())]
        total = sum(len(found) for _, _, found in items)
        result.proposals += total
        executor = self.executor or LocalExecutor()
        records = executor.map(VerifyTask(), items, batch_size=VERIFY_BATCH, workers=max(1, self.workers))
        desc = f"verifying {name or 'crawl'} proposals"
        for sha, other, cosine, kind, inliers, score, reason in tqdm(
            records, total=total, desc=desc, unit="pair", file=sys.stderr, leave=False
        ):
            if "decode" in reason:
                result.undecodable += 1
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


def image_paths(catalog: Catalog, data_dir: Path, shas: list[str]) -> dict[str, str]:
    """The absolute file path of each hashed image among ``shas`` (others are left out)."""
    from sqlalchemy import select

    from curation.catalog import Image, PerceptualHash

    found: dict[str, str] = {}
    with catalog.session() as session:
        for part in chunks(shas):
            stmt = select(Image.sha256, Image.path).join(PerceptualHash, PerceptualHash.sha256 == Image.sha256)
            for sha, path in session.execute(stmt.where(Image.sha256.in_(part))):
                found[sha] = str((data_dir / path).absolute())
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
