"""One reviewer's decision on one pair, atomic and refused when it would double a vote.

``decide`` runs in its own transaction and holds the pair's lock while it checks and writes:
SQLite takes the database's write lock first (``BEGIN IMMEDIATE``), PostgreSQL a transaction
advisory lock keyed by the pair (not a row lock on ``filter_verdicts``, so a filter run rewriting
verdicts never waits on reviewers). Two reviewers deciding the same pair at once are thus
serialised, and the second sees the first's vote (READ COMMITTED: each statement a new snapshot):
a pair never gains a vote once the consensus rule has closed it (under ``fixed``, more than
``votes_needed`` non-skip votes), and no vote is lost (each is its own row). After the vote, still
under the lock, the rule settles the pair (``consensus.settle``): it closes, or asks for another vote.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from curation.annotate import accuracy, consensus, ranker
from curation.annotate.queue import SKIP, pair_exists
from curation.annotate.serving import is_closed
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
    """Take the lock that serialises decisions on (sha256, wnid), as the transaction's first
    statement (held until it ends); whether the pair has a filter verdict at all."""
    if session.get_bind().dialect.name == "sqlite":
        session.connection().exec_driver_sql("BEGIN IMMEDIATE")  # waits up to the busy timeout
    else:
        session.execute(select(func.pg_advisory_xact_lock(pair_lock_key(sha256, wnid))))
    stmt = select(FilterVerdict.kept).where(FilterVerdict.sha256 == sha256, FilterVerdict.wnid == wnid)
    return session.execute(stmt).first() is not None


def pair_lock_key(sha256: str, wnid: str) -> int:
    """The signed 64-bit PostgreSQL advisory-lock key of a pair (as ``dialect`` keys its named locks)."""
    digest = hashlib.sha256(f"curation:annotate-pair:{sha256}:{wnid}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def decide(
    session: Session, sha256: str, wnid: str, annotator: str, verdict: str, note: str | None, rule: consensus.Rule
) -> str | None:
    """Record ``annotator``'s ``verdict`` on (sha256, wnid) unless the pair is unknown, no longer
    reviewable, or closed by the consensus ``rule`` without a vote of theirs (then an error code of
    ``ERROR_TEXT``, and nothing is written); then settle the pair. ``session`` must be fresh: the
    lock comes first. Changing one's own vote is allowed: it replaces a vote, it does not add one."""
    if not lock_pair(session, sha256, wnid):
        return UNKNOWN_ID
    if not pair_exists(session, sha256, wnid):
        return NOT_REVIEWABLE
    if is_closed(session, sha256, wnid) and not has_vote(session, sha256, wnid, annotator):
        return COMPLETE
    record_vote(session, sha256, wnid, annotator, verdict, note)
    session.flush()
    weights = accuracy.load(session) if rule.kind == consensus.DYNAMIC else accuracy.Weights()
    consensus.settle(session, rule, sha256, wnid, ranker.load(session)[0], weights)
    return None


def has_vote(session: Session, sha256: str, wnid: str, annotator: str) -> bool:
    """Whether ``annotator`` has a vote (not a skip) on (sha256, wnid)."""
    stmt = select(Annotation.id).where(
        Annotation.sha256 == sha256,
        Annotation.wnid == wnid,
        Annotation.annotator == annotator,
        Annotation.verdict != SKIP,
    )
    return session.execute(stmt).first() is not None
