"""Which image of a cluster survives: the largest resolution, the most open licence, the earliest find."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from curation.dedup.hash_table import HashTable

if TYPE_CHECKING:
    import numpy as np

    from curation.catalog import Catalog


# Licence openness, most open first: public domain, attribution, share-alike, then restrictions.
_LICENCE_RANKS = (
    (re.compile(r"\b(cc0|pdm|public[- ]?domain|publicdomain|no known copyright)\b"), 0),
    (re.compile(r"\bby[- ]nc[- ]nd\b|\bnc[- ]nd\b"), 6),
    (re.compile(r"\bby[- ]nc[- ]sa\b|\bnc[- ]sa\b"), 5),
    (re.compile(r"\bby[- ]nc\b|\bnc\b"), 4),
    (re.compile(r"\bby[- ]nd\b|\bnd\b"), 3),
    (re.compile(r"\bby[- ]sa\b|\bsa\b"), 2),
    (re.compile(r"\bby\b|attribution"), 1),
)


UNKNOWN_LICENCE_RANK = 7


def licence_rank(licence: str | None) -> int:
    """0 for public domain / CC0 up to 6 for CC BY-NC-ND; 7 for unknown or all rights reserved."""
    if not licence:
        return UNKNOWN_LICENCE_RANK
    text = licence.lower().replace("_", "-")
    for pattern, rank in _LICENCE_RANKS:
        if pattern.search(text):
            return rank
    return UNKNOWN_LICENCE_RANK


@dataclass
class Member:
    """What the survivor rule reads about one image of a cluster of several."""

    pixels: int
    found_at: datetime
    licence: int = UNKNOWN_LICENCE_RANK
    wnids: set[str] = field(default_factory=set)

    def survival_order(self, sha: str) -> tuple[Any, ...]:
        return (-self.pixels, self.licence, self.found_at, sha)


def member_details(catalog: Catalog, shas: list[str]) -> dict[str, Member]:
    """Resolution, first find, best licence and classes of the given images (indexed look-ups, in
    sha256 order: consecutive look-ups share index pages)."""
    from sqlalchemy import select

    from curation.catalog import Candidate, Image

    shas = sorted(shas)
    details: dict[str, Member] = {}
    with catalog.session() as session:
        for start in range(0, len(shas), 500):
            part = shas[start : start + 500]
            for sha, width, height, created in session.execute(
                select(Image.sha256, Image.width, Image.height, Image.created_at).where(Image.sha256.in_(part))
            ):
                details[sha] = Member(width * height, created)
            for sha, wnid, licence, created in session.execute(
                select(Candidate.image_sha256, Candidate.wnid, Candidate.license, Candidate.created_at).where(
                    Candidate.image_sha256.in_(part)
                )
            ):
                member = details[sha]
                member.wnids.add(wnid)
                member.licence = min(member.licence, licence_rank(licence))
                if created is not None and created < member.found_at:
                    member.found_at = created
    return details


def decide_survivors(catalog: Catalog, table: HashTable, roots: np.ndarray) -> tuple[dict[int, int], set[int]]:
    """The survivor row of each cluster (by root row) by the representative rule, and the roots of
    the clusters whose rows were found for more than one class."""
    import numpy as np

    shas = [sha.decode() for sha in table.shas.tolist()]
    several = np.flatnonzero(np.bincount(roots, minlength=len(roots))[roots] > 1)
    details = member_details(catalog, [shas[r] for r in several.tolist()])
    survivors = {int(root): int(root) for root in np.unique(roots)}
    wnids: dict[int, set[str]] = {}
    for row in several.tolist():
        root, best = int(roots[row]), survivors[int(roots[row])]
        wnids.setdefault(root, set()).update(details[shas[row]].wnids)
        if details[shas[row]].survival_order(shas[row]) < details[shas[best]].survival_order(shas[best]):
            survivors[root] = row
    return survivors, {root for root, found in wnids.items() if len(found) > 1}
