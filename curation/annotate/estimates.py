"""A grid page's default verdict: the predicted majority of the page. Once the learned order has
learned enough votes (``ranker.MIN_VOTES``), its P(accept) of the page's pairs decides: ``accept``
when most are predicted accepts, else the first reject verdict. Before that, people's verdicts on
earlier pairs of the class, from a bounded sample of votes (a request costs the same however many
votes the catalog holds); with none, ``accept`` (the filter kept every queued pair). The estimate
of accepts left is in ``progress.py``.
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


def page_default(
    session: Session, wnid: str, scores: list[float], trusted: bool, reject_verdict: str
) -> dict[str, Any]:
    """The default verdict of a grid page of class ``wnid`` whose pairs the model scored ``scores``."""
    if trusted and scores:
        accepts = sum(p >= 0.5 for p in scores)
        verdict = "accept" if 2 * accepts > len(scores) else reject_verdict
        return {
            "verdict": verdict,
            "basis": f"the learned order predicts {accepts} of the page's {len(scores)} pairs accepted",
        }
    return default_verdict(session, wnid)
