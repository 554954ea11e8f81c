"""One reviewer's decision on one pair, atomic and refused when it would double a vote.

``decide`` runs in its own transaction and holds the pair's write lock while it checks and
writes: SQLite takes the database's write lock first (``BEGIN IMMEDIATE``), PostgreSQL locks the
pair's ``filter_verdicts`` row (``FOR UPDATE``). Two reviewers deciding the same pair at once are
thus serialised, and the second sees the first's vote: a pair never gains more than
``votes_needed`` non-skip votes through it, and no vote is lost (each is its own row).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation.annotate.queue import SKIP, pair_exists
from curation.annotate.votes import record_vote
from curation.catalog import Annotation, FilterVerdict

# Per-item error codes, each with the sentence the API returns beside it.
UNKNOWN_ID = "unknown_id"
NOT_REVIEWABLE = "not_reviewable"
COMPLETE = "complete"
BUSY = "busy"
ERROR_TEXT = {
    UNKNOWN_ID: "no such image and class in the catalog",
    NOT_REVIEWABLE: "the pair is no longer reviewable (the filter dropped it or dedup set its image aside)",
    COMPLETE: "the pair already holds the votes it needs (another reviewer finished it)",
    BUSY: "the catalog stayed locked past its busy timeout: nothing was written, send this decision again",
}


def lock_pair(session: Session, sha256: str, wnid: str) -> bool:
    """Take the write lock that serialises decisions on (sha256, wnid), as the transaction's first
    statement; whether the pair has a filter verdict at all."""
    if session.get_bind().dialect.name == "sqlite":
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")  # waits up to the busy timeout
        stmt = select(FilterVerdict.kept)
    else:
        stmt = select(FilterVerdict.kept).with_for_update()
    row = session.execute(stmt.where(FilterVerdict.sha256 == sha256, FilterVerdict.wnid == wnid)).first()
    return row is not None


def decide(
    session: Session, sha256: str, wnid: str, annotator: str, verdict: str, note: str | None, votes_needed: int
) -> str | None:
    """Record ``annotator``'s ``verdict`` on (sha256, wnid) unless the pair is unknown, no longer
    reviewable, or already holds ``votes_needed`` non-skip votes of others (then an error code of
    ``ERROR_TEXT``, and nothing is written). ``session`` must be fresh: the lock comes first.
    Changing one's own non-skip vote is allowed: it replaces a vote, it does not add one."""
    if not lock_pair(session, sha256, wnid):
        return UNKNOWN_ID
    if not pair_exists(session, sha256, wnid):
        return NOT_REVIEWABLE
    voters = set(
        session.scalars(
            select(Annotation.annotator).where(
                Annotation.sha256 == sha256, Annotation.wnid == wnid, Annotation.verdict != SKIP
            )
        )
    )
    if annotator not in voters and len(voters) >= votes_needed:
        return COMPLETE
    record_vote(session, sha256, wnid, annotator, verdict, note)
    return None
