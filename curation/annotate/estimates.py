"""What the review API predicts from the votes so far: a grid page's default verdict and the
accepts left in the queue. Both read a bounded sample of votes, so a request costs the same
however many votes the catalog holds.

Without a learned model yet, the basis is plain: the filter kept every queued pair (the model
got it wrong), and people's verdicts on earlier pairs of the same class (else of all classes)
are the best guess for the next ones.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation.annotate.queue import SKIP
from curation.catalog import Annotation

# Non-skip votes read per estimate: the standard error of a share estimated from 2,000 votes is at
# most 0.5 / sqrt(2000) = 1.1 points, and the read stays a few ms (one index range, no sort).
SAMPLE_VOTES = 2000
DEFAULT_VERDICT = "accept"  # a class nobody has voted on yet: the filter's keep says "a candidate"


def vote_sample(session: Session, wnid: str | None = None) -> Counter[str]:
    """Verdict -> count over up to ``SAMPLE_VOTES`` non-skip votes (of class ``wnid``, else all),
    as the index yields them (no ORDER BY: the read stops at the sample's size)."""
    stmt = select(Annotation.verdict).where(Annotation.verdict != SKIP)
    if wnid:
        stmt = stmt.where(Annotation.wnid == wnid)
    return Counter(session.scalars(stmt.limit(SAMPLE_VOTES)))


def default_verdict(session: Session, wnid: str) -> dict[str, Any]:
    """The verdict a grid page of class ``wnid`` starts every image at, and why: the most common
    human verdict of the class so far, else ``DEFAULT_VERDICT``."""
    sample = vote_sample(session, wnid)
    if not sample:
        return {"verdict": DEFAULT_VERDICT, "basis": "no votes on this class yet: the filter kept every pair"}
    verdict, n = max(sample.items(), key=lambda kv: (kv[1], kv[0] == DEFAULT_VERDICT))
    return {
        "verdict": verdict,
        "basis": f"most common verdict of {sum(sample.values())} sampled votes on this class ({n} {verdict})",
    }


def remaining_accepts(session: Session, remaining: int, wnid: str | None = None) -> dict[str, Any]:
    """``remaining`` times the share of ``accept`` among sampled non-skip votes (of the class when
    it has votes, else of all classes); None when nobody has voted yet."""
    scope = "class"
    sample = vote_sample(session, wnid) if wnid else Counter()
    if not sample:
        scope, sample = "all classes", vote_sample(session)
    votes = sum(sample.values())
    rate = sample["accept"] / votes if votes else None
    return {
        "estimate": None if rate is None else round(remaining * rate),
        "accept_rate": rate,
        "sampled_votes": votes,
        "basis": f"remaining x share of accept among up to {SAMPLE_VOTES} non-skip votes of {scope}"
        if votes
        else "no votes yet",
    }
