"""The dedup stage: hash, then under the dedup lock cluster, check references and write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.dedup import hash_table, writes  # load_table, mark_clustered: one place to wrap in tests
from curation.dedup.config import DEFAULT_ORIENTATIONS, ORIENTATION_CHOICES, EmbeddingSpec, Match
from curation.dedup.hash_pages import hash_new_images
from curation.dedup.hash_table import cluster
from curation.dedup.matchers import embedding_round, open_embedding
from curation.dedup.references import REFERENCES_META, check_references, reference_signatures
from curation.dedup.rerun import cluster_new
from curation.dedup.summary import Summary, summarise
from curation.dedup.writes import no_statuses, status_row, write_changes, write_clusters
from curation.errors import CurationError
from curation.store.reader import ImageReader, local_reader

if TYPE_CHECKING:
    from curation.catalog import Catalog
    from curation.engine import Executor


RULE_META = "dedup:rule"  # the match rule the stored clusters were made with


def run_stage(
    catalog: Catalog,
    data_dir: Path,
    max_distance: int,
    margin: int,
    against: list[str],
    workers: int,
    orientations: int = DEFAULT_ORIENTATIONS,
    executor: Executor | None = None,
    images: ImageReader | None = None,
    embedding: EmbeddingSpec | None = None,
) -> Summary:
    """Hash new images, cluster near-duplicates (each image queried in ``orientations`` orientations,
    2 or 8), check reference sets, and write the statuses and links that changed. With the rule of
    the stored clusters, nothing rehashed and every reference set checked before, only the new
    images are searched in the stored index (:mod:`curation.dedup_index`) and only the clusters they
    hit are read and rewritten; otherwise every image is read (and the index rebuilt). ``images``: the
    image store (default: the folder ``data_dir/images``). ``embedding``: the embedding matcher beside
    the hashes (:mod:`curation.dedup.matchers`); None: the hashes alone."""
    from curation import reference_sets
    from curation.catalog import Meta
    from curation.dedup_index import StoredIndex
    from curation.dialect import catalog_lock

    references = {name: reference_sets.load(catalog, data_dir, name) for name in against}  # fail before work
    if orientations not in ORIENTATION_CHOICES:
        raise CurationError(f"orientations must be 2 or 8, got {orientations!r}")
    if executor is None:
        from curation.engine.local import LocalExecutor

        executor = LocalExecutor()
    images = images or local_reader(data_dir)
    with catalog.session() as session:
        made_by = session.get(Meta, RULE_META)  # a matcher that cannot run stops here if it made them
    matcher = open_embedding(catalog, data_dir, embedding, executor, workers, images, made_by and made_by.value)
    hashed_now, rehashed, failures = hash_new_images(catalog, images, workers, orientations, executor)
    rule = f"pHash <= {max_distance}, dHash <= {max_distance + margin}, {orientations} orientations"
    match = Match(max_distance, margin, orientations, rule)
    decided = rule if matcher is None else f"{rule}; {matcher.label}"  # what stored clusters were made by
    with catalog_lock(catalog.engine, "dedup"):  # one run at a time owns the stored index
        with catalog.session() as session:
            stored = session.get(Meta, RULE_META)
            full = rehashed > 0 or stored is None or stored.value != decided
        checked, signatures = reference_signatures(catalog, decided, against)
        unchecked = {name: ref for name, ref in references.items() if checked.get(name) != signatures[name]}
        columns = 2 * orientations
        index = None if full or unchecked else StoredIndex.open(catalog, data_dir, rule, max_distance, columns)
        if index is not None:
            clustered = cluster_new(catalog, index, references, match, matcher, data_dir)
        else:
            clustered = _cluster_everything(catalog, data_dir, references, unchecked, match, full, matcher)
        failed = {sha: status_row(sha, "failed", reason=reason) for sha, reason in failures.items()}
        write_changes(catalog, failed, {})
        with catalog.session() as session:
            session.merge(Meta(key=RULE_META, value=decided))
            kept = {} if clustered or full else checked  # images clustered without a set are checked again
            session.merge(Meta(key=REFERENCES_META, value=json.dumps({**kept, **signatures}, sort_keys=True)))
    summary = summarise(catalog)
    summary.hashed_now, summary.rehashed, summary.failed = hashed_now, rehashed, len(failures)
    summary.against, summary.rule = list(against), rule
    summary.matchers = "hash" if matcher is None else f"hash + {matcher.label}"
    if matcher is not None:
        summary.embedded_now, summary.unreadable_for_embedding = matcher.embedded_now, matcher.unreadable
    return summary


def _cluster_everything(
    catalog: Catalog,
    data_dir: Path,
    references: dict[str, Any],
    unchecked: dict[str, Any],
    match: Match,
    full: bool,
    matcher: Any = None,
) -> bool:
    """Read every hash: cluster all images (``full``) or merge the new ones into the stored
    clusters; check every image against the ``unchecked`` reference sets and the new ones against
    the others; rebuild the stored index. Returns whether there were new images."""
    import numpy as np

    from curation.dedup_index import StoredIndex

    table = hash_table.load_table(catalog, match.orientations, full)
    new_rows = np.flatnonzero(table.new)
    checked_before = {name: ref for name, ref in references.items() if name not in unchecked}
    every, new_shas = table.shas.astype(str).tolist(), table.shas[new_rows].astype(str).tolist()
    queried = {name: (ref, new_shas) for name, ref in checked_before.items()}
    queried.update({name: (ref, every) for name, ref in unchecked.items()})
    proved, proofs = embedding_round(
        matcher, catalog, data_dir, every if full else new_shas, queried, match.max_distance
    )
    ends = (table.rows([a for a, _ in proved.edges]), table.rows([b for _, b in proved.edges]))
    known = (ends[0] >= 0) & (ends[1] >= 0)
    roots = cluster(table, match.max_distance, match.margin, full, links=(ends[0][known], ends[1][known]))
    check_references(catalog, table, checked_before, match, new_rows, proved.reference_links)
    leaked = check_references(catalog, table, unchecked, match, None, proved.reference_links)
    index = StoredIndex.empty(catalog, data_dir, match.rule, match.max_distance)
    index.add(table.shas, table.hashes)
    index.commit(catalog)
    every = full or bool(unchecked)
    affected = np.ones(len(table.shas), bool) if every else np.isin(roots, roots[table.new])
    write_clusters(catalog, table, roots, affected, leaked, fresh=full and no_statuses(catalog), proofs=proofs)
    writes.mark_clustered(catalog, table, table.new)
    return bool(len(new_rows))
