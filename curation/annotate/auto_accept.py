"""`curation annotate auto-accept`: accept every pair in the review queue without looking, for a
scripted demo. The votes carry the annotator name ``AUTO_ACCEPT_ANNOTATOR`` so that the catalog,
`curation annotate stats`, the datasheet and the dataset card say they are not a human review.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, insert, select
from sqlalchemy.orm import Session

from curation.annotate.queue import eligible
from curation.catalog import Annotation, FilterVerdict, Meta, utcnow
from curation.catalog.queries import AUTO_ACCEPT_ANNOTATOR, AUTOMATIC_RELEASE_KEY

__all__ = ["AUTO_ACCEPT_ANNOTATOR", "AUTO_ACCEPT_NOTE", "auto_accept", "count_for_release"]
AUTO_ACCEPT_NOTE = "curation annotate auto-accept: not a human review"
CHUNK = 5000  # rows per INSERT: keeps each statement well under SQLite's and psycopg's parameter limits


def auto_accept(session: Session) -> int:
    """Add an ``accept`` vote by ``AUTO_ACCEPT_ANNOTATOR`` to every reviewable pair that lacks one;
    returns how many were added (a rerun adds only what is new)."""
    mine = exists().where(
        and_(
            Annotation.sha256 == FilterVerdict.sha256,
            Annotation.wnid == FilterVerdict.wnid,
            Annotation.annotator == AUTO_ACCEPT_ANNOTATOR,
        )
    )
    pairs = session.execute(
        eligible(select(FilterVerdict.sha256, FilterVerdict.wnid)).where(~mine).order_by(FilterVerdict.sha256)
    ).all()
    now = utcnow()
    rows = [
        {
            "sha256": sha,
            "wnid": wnid,
            "annotator": AUTO_ACCEPT_ANNOTATOR,
            "verdict": "accept",
            "note": AUTO_ACCEPT_NOTE,
            "created_at": now,
        }
        for sha, wnid in pairs
    ]
    for start in range(0, len(rows), CHUNK):
        session.execute(insert(Annotation), rows[start : start + CHUNK])
    return len(rows)


def count_for_release(session: Session) -> None:
    """Mark the catalog so that automatic accepts enter a release under the fixed rule (a demo's
    choice, named in the datasheet); without the mark every released pair needs a human accept."""
    if session.get(Meta, AUTOMATIC_RELEASE_KEY) is None:
        session.add(Meta(key=AUTOMATIC_RELEASE_KEY, value="auto-accept --count-for-release: NOT a human review"))
