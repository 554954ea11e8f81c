"""The "possible copy of ..." notes of the review pages, read from ``possible_copies``.

The embedding matcher (``curation/dedup/embed_match.py``) stores there the proposals its verifier
scored just below the threshold, or could not decide (too few keypoints, no decode): never links,
so dedup, clustering and release never read them. Review only shows them, beside the pair, so the
reviewer can reject a copy with the verdicts of the page; the pair's verdict is recorded as for any
pair and the row stays as it is. One query per page, by the indexed ``possible_copies.sha256``.

A crawl pair is stored once, under the image dedup was checking (on a rerun the newer one), so only
that side carries the note: reviewers are not led to reject the original and its copy together.
A crawled other image is shown by its catalog id (``/image/<sha256>``, the only way the server
serves files); a reference set's item is no catalog image, so it is shown as text: set and key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation.annotate.queue import is_sha256
from curation.catalog import PossibleCopy


def possible_copies(session: Session, shas: set[str]) -> dict[str, list[dict[str, Any]]]:
    """sha256 -> its possible copies, best score first, each ``{"kind", "score", "cosine",
    "reference"}`` (reference: the set's name, None for the crawl) plus ``sha256`` and ``image``
    for a crawled image, else ``key`` (the reference item's key, verbatim)."""
    if not shas:
        return {}
    stmt = select(PossibleCopy).where(PossibleCopy.sha256.in_(shas))
    rows = session.scalars(stmt.order_by(PossibleCopy.sha256, PossibleCopy.score.desc(), PossibleCopy.other))
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        entry: dict[str, Any] = {"kind": row.kind, "score": row.score, "cosine": row.cosine, "reference": row.reference}
        if row.reference is None and is_sha256(row.other):
            entry.update(sha256=row.other, image=f"/image/{row.other}", key=None)
        else:  # a reference item (or a crawl row whose other is no image id): text only
            entry.update(sha256=None, image=None, key=row.other)
        found.setdefault(row.sha256, []).append(entry)
    return found


def attach(session: Session, items: list[dict[str, Any]]) -> None:
    """Give each described pair (``queue.describe``) its ``possible_copies`` list (often empty)."""
    found = possible_copies(session, {item["sha256"] for item in items})
    for item in items:
        item["possible_copies"] = found.get(item["sha256"], [])
