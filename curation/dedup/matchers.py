"""The matcher seam: a matcher proposes and proves links; clustering, survivors, leak flags, the stored
index and the catalog writes are shared (:mod:`stage`, :mod:`rerun`, :mod:`writes`).

Two matchers: ``hash`` (pHash/dHash within the rule, :mod:`hash_table` and :mod:`references`: it
proves by itself) and ``embedding`` (:mod:`embed_match`: top-k embedding proposals, each proved or
refused by geometric verification). This module opens the embedding matcher when its weights can be
had, and runs one round of it for the shared code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.dedup.config import EmbeddingSpec
from curation.dedup.embed_match import KIND, EmbeddingMatcher, EmbeddingResult, write_possible
from curation.dedup.hash_table import chunks
from curation.errors import CurationError
from curation.hub import hub_reachable

if TYPE_CHECKING:
    from curation.catalog import Catalog
    from curation.engine import Executor
    from curation.store.reader import ImageReader


def open_embedding(
    catalog: Catalog,
    data_dir: Path,
    spec: EmbeddingSpec | None,
    executor: Executor | None,
    workers: int,
    images: ImageReader | None = None,
    stored_rule: str | None = None,
) -> EmbeddingMatcher | None:
    """The embedding matcher, or None with one line when its weights cannot be had here (no
    checkpoint, no file a filter run recorded, hub unreachable): the run goes on with the hashes.
    ``images``: the image store the catalog's images are read from (default: ``data_dir/images``).
    ``stored_rule``: the rule the stored clusters were made with. When the embedding matcher made them,
    a run without it would re-cluster every image by the hashes alone and drop every link it proved
    (measured: 4 leaked -> 0), so it stops instead (CurationError, one line, nothing decided)."""
    if spec is None:
        return None
    why = _no_weights(catalog, spec)
    if why is None:
        try:
            return EmbeddingMatcher(catalog, data_dir, spec, executor, workers, images)
        except CurationError as exc:
            why = str(exc)
    if stored_rule and "; embedding " in stored_rule:
        raise CurationError(
            f"the stored clusters hold links the embedding matcher proved, and it cannot run here: {why}. "
            "Make its weights available, or re-cluster by the hashes alone with --matchers hash (dropping them)"
        )
    print(f"dedup: embedding matcher off this run: {why}", file=sys.stderr)
    return None


def _no_weights(catalog: Catalog, spec: EmbeddingSpec) -> str | None:
    """Why the embedding model's weights cannot be loaded here, found without importing torch."""
    from curation.filter.weights import known_weights_hash

    if spec.checkpoint is not None:
        return None if Path(spec.checkpoint).is_file() else f"checkpoint not found: {spec.checkpoint}"
    with catalog.session() as session:
        if known_weights_hash(session, spec.model, None) is not None:
            return None
    if hub_reachable():
        return None
    return (
        f"no local weights of {spec.model} (the hub is unreachable): set [dedup] checkpoint or "
        "[filter] checkpoint, or run the filter with this model once"
    )


@dataclass
class Proofs:
    """Crawl images joined by a proved embedding link: (inliers, score) by sha256, and the hash rule's
    distance beyond which the link is named by the embedding proof instead of the hashes."""

    max_distance: int
    by_sha: dict[str, tuple[int, float]] = field(default_factory=dict)


def embedding_round(
    matcher: EmbeddingMatcher | None,
    catalog: Catalog,
    data_dir: Path,
    crawl_queries: list[str],
    references: dict[str, tuple[Any, list[str]]],
    max_distance: int,
) -> tuple[EmbeddingResult, Proofs]:
    """Run the matcher for ``crawl_queries`` and each set's (hashes, queried sha256s); write the
    possible copies of everything queried; return what it proved and the crawl images' proofs."""
    from curation.dedup.ref_embed import open_index

    if matcher is None:
        return EmbeddingResult(), Proofs(max_distance)
    indexes = {
        name: (open_index(catalog, data_dir, name, ref, matcher.embedder, matcher.executor), shas)
        for name, (ref, shas) in references.items()
    }
    result = matcher.run(crawl_queries, indexes)
    kept = _keep_unverifiable_leaks(catalog, result)
    _say_undecodable(result, kept)
    queried: dict[str | None, list[str]] = {None: crawl_queries}
    queried.update({name: shas for name, (index, shas) in indexes.items() if index is not None})
    write_possible(catalog, queried, result.possible)
    return result, Proofs(max_distance, dict(result.proofs))


def _keep_unverifiable_leaks(catalog: Catalog, result: EmbeddingResult) -> int:
    """A stored proved reference link whose pair cannot be verified now (an image did not decode for
    ORB: damaged or gone since it was proved) stands, instead of becoming a possible copy: a run that
    checks every image again (a new rule, a changed set) would otherwise drop it and un-leak its
    cluster. Returns how many were kept."""
    from sqlalchemy import select

    from curation.catalog import DuplicateLink

    unverified = [row for row in result.possible if row["reference"] and row["kind"].endswith(":no-decode")]
    if not unverified:
        return 0
    stored: dict[tuple[str, str, str], dict] = {}
    columns = (DuplicateLink.sha256, DuplicateLink.other, DuplicateLink.reference, DuplicateLink.distance)
    with catalog.session() as session:
        for part in chunks(sorted({row["sha256"] for row in unverified})):
            where = (
                DuplicateLink.sha256.in_(part),
                DuplicateLink.reference.is_not(None),
                DuplicateLink.hash_kind == KIND,
            )
            for sha, other, name, inliers, score in session.execute(
                select(*columns, DuplicateLink.score).where(*where)
            ):
                link = {"sha256": sha, "other": other, "reference": name, "hash_kind": KIND, "distance": inliers}
                stored[(sha, other, name)] = {**link, "score": score}
    keys = [(row["sha256"], row["other"], row["reference"]) for row in unverified]
    for key in dict.fromkeys(k for k in keys if k in stored):
        result.reference_links.setdefault(key[2], []).append(stored[key])
    result.possible = [row for row in result.possible if (row["sha256"], row["other"], row["reference"]) not in stored]
    return sum(key in stored for key in keys)


def _say_undecodable(result: EmbeddingResult, kept: int) -> None:
    """One line for the proposals that could not be verified because an image did not decode for ORB
    (a file damaged or gone since it was hashed and embedded): kept for review, never a new link."""
    if result.first_undecodable is None:
        return
    query, other, name, reason = result.first_undecodable
    side, _, why = reason.partition(" did not decode for ORB: ")
    image = query if side == "query" else f"{other} of reference set {name!r}" if name else other
    stood = f"; {kept} kept their stored proved links" if kept else ""
    print(
        f"dedup: {result.undecodable} proposal(s) not verified: {image} did not decode for ORB ({why}); "
        f"left for review as possible copies{stood}",
        file=sys.stderr,
    )


def add_stored_proofs(catalog: Catalog, proofs: Proofs, shas: list[str]) -> None:
    """Add the stored embedding-proved crawl links of these images (a cluster read again keeps them)."""
    for sha, proof in stored_proofs(catalog, shas).items():
        proofs.by_sha.setdefault(sha, proof)


def stored_proofs(catalog: Catalog, shas: list[str]) -> dict[str, tuple[int, float]]:
    """The stored embedding-proved crawl links of these images."""
    from sqlalchemy import select

    from curation.catalog import DuplicateLink

    found: dict[str, tuple[int, float]] = {}
    columns = (DuplicateLink.sha256, DuplicateLink.distance, DuplicateLink.score)
    with catalog.session() as session:
        for part in chunks(shas):
            where = (DuplicateLink.sha256.in_(part), DuplicateLink.reference.is_(None), DuplicateLink.hash_kind == KIND)
            for sha, inliers, score in session.execute(select(*columns).where(*where)):
                found[sha] = (int(inliers), float(score or 0.0))
    return found
