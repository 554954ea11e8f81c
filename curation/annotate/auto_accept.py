"""`curation annotate auto-accept`: accept every pair in the review queue without looking, for a
scripted demo. The votes carry the annotator name ``AUTO_ACCEPT_ANNOTATOR`` so that the catalog,
`curation annotate stats`, the datasheet and the dataset card say they are not a human review.
"""

from __future__ import annotations

from sqlalchemy import and_, exists, insert, select
from sqlalchemy.orm import Session

from curation.annotate.queue import eligible
from curation.catalog import Annotation, FilterVerdict, utcnow

AUTO_ACCEPT_ANNOTATOR = "auto-accept_not-a-human-review"
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
