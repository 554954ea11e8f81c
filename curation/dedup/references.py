"""Checking images against reference sets: their links, and which sets every image was checked against."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from curation.dedup.config import Match
from curation.dedup.hash_table import HashTable, chunks

if TYPE_CHECKING:
    import numpy as np

    from curation.catalog import Catalog


# The reference sets every clustered image has been checked against, and what they were then.
REFERENCES_META = "dedup:references"


def reference_signatures(catalog: Catalog, rule: str, names: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The reference sets every clustered image was checked against, as they were then (hash file,
    size, time and the rule), and what the sets ``names`` are now."""
    from curation.catalog import Meta, ReferenceSet

    with catalog.session() as session:
        stored = session.get(Meta, REFERENCES_META)
        try:
            checked = {str(k): str(v) for k, v in json.loads(stored.value).items()} if stored else {}
        except (ValueError, AttributeError):
            checked = {}
        signatures = {}
        for name in names:
            row = session.get(ReferenceSet, name)
            signatures[name] = f"{rule}|{row.hash_file}|{row.count}|{row.updated_at}" if row else ""
    return checked, signatures


def check_references(
    catalog: Catalog,
    table: HashTable,
    references: dict[str, Any],
    match: Match,
    rows: np.ndarray | None,
    proved: dict[str, list[dict]] | None = None,
) -> np.ndarray:
    """Rewrite the links of the reference sets checked now (other sets' links stay), of every row or
    of ``rows`` only; returns whether each row is leaked by any set's link. ``proved``: each set's
    links from other matchers (the embedding matcher's verified ones), kept where no hash link
    already joins the same pair."""
    import numpy as np
    from sqlalchemy import delete, insert, select

    from curation.catalog import DuplicateLink

    queried = np.arange(len(table.shas)) if rows is None else rows
    for name, ref in references.items():
        links = _reference_links(table.hashes[queried], table.shas[queried], name, ref, match)
        hashed = {(link["sha256"], link["other"]) for link in links}
        mine = set(table.shas[queried].astype(str).tolist())
        extra = [
            x for x in (proved or {}).get(name, []) if x["sha256"] in mine and (x["sha256"], x["other"]) not in hashed
        ]
        links = links + list({(x["sha256"], x["other"]): x for x in extra}.values())
        with catalog.session() as session:
            if rows is None:
                session.execute(delete(DuplicateLink).where(DuplicateLink.reference == name))
            else:
                for part in chunks([sha.decode() for sha in table.shas[queried]]):
                    session.execute(
                        delete(DuplicateLink).where(DuplicateLink.reference == name, DuplicateLink.sha256.in_(part))
                    )
            if links:
                session.execute(insert(DuplicateLink), links)
    linked_to_a_set = DuplicateLink.reference.is_not(None)
    with catalog.session() as session:
        if rows is None:
            linked = list(session.scalars(select(DuplicateLink.sha256).where(linked_to_a_set).distinct()))
        else:  # a few clusters: their images' links by the sha256 index
            linked = [
                sha
                for part in chunks([sha.decode() for sha in table.shas])
                for sha in session.scalars(
                    select(DuplicateLink.sha256).where(linked_to_a_set, DuplicateLink.sha256.in_(part)).distinct()
                )
            ]
    found = table.rows(linked)
    leaked = np.zeros(len(table.shas), dtype=bool)
    leaked[found[found >= 0]] = True
    return leaked


def _reference_links(hashes: np.ndarray, shas: np.ndarray, name: str, ref: Any, match: Match) -> list[dict]:
    """A link per (image, reference item) within the rule: the smallest distance, then the first
    orientation."""
    import numpy as np

    from curation.hamming_index import HammingIndex
    from curation.hashing import ORIENTATIONS
    from curation.near_duplicates import iter_matches

    if not len(hashes):
        return []
    index = HammingIndex(ref.phash, match.max_distance)
    found = list(iter_matches(hashes, index, ref.dhash, match.max_distance, match.margin))
    q, c, d, k = (
        np.concatenate([getattr(f, a) for f in found]) if found else np.zeros(0, np.int64)
        for a in ("query", "item", "distance", "orientation")
    )
    best = np.lexsort((k, d, c, q))
    first = best[np.r_[True, (q[best][1:] != q[best][:-1]) | (c[best][1:] != c[best][:-1])]] if len(q) else best
    return [
        {
            "sha256": shas[q[i]].decode(),
            "other": ref.keys[c[i]].decode("utf-8", "replace"),
            "reference": name,
            "hash_kind": ORIENTATIONS[int(k[i])].kind,
            "distance": int(d[i]),
            "score": None,
        }
        for i in first
    ]
