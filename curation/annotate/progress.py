"""How far review got, and how many accepts are left: for the v1 API's ``next``, ``curation status``,
the report and the datasheet.

The estimate of accepts left rests on the random share: the pairs served at random (``drawn``; every
fresh pair under the hash order) are an unbiased sample of the queue, so the share of ``accept``
among their votes, times the pairs left, estimates the accepts left, with a Wilson 95 % interval.
The learned order's own picks are not used: they are the likely accepts, served first.
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from curation.annotate import consensus, ranker
from curation.annotate.queue import remaining as counted_remaining
from curation.annotate.serving import not_mine
from curation.catalog import CLOSED, FRESH, MORE, Meta, ReviewCount, ReviewQueue

Z95 = 1.96


def remaining(session: Session, annotator: str, rule: consensus.Rule, wnid: str | None = None) -> int:
    """Pairs left in ``annotator``'s queue. Fixed: exact from ``review_counts``. Dynamic: the fresh
    pairs (from ``review_counts``) plus the open ones with votes (few: they are served first) that
    ``annotator`` has not decided."""
    if rule.kind == consensus.FIXED:
        return counted_remaining(session, annotator, rule.votes_needed, wnid)
    mine = case((ReviewCount.annotator == "", ReviewCount.pairs), else_=-ReviewCount.pairs)
    fresh = select(func.coalesce(func.sum(mine), 0)).where(
        ReviewCount.annotator.in_(["", annotator]), ReviewCount.votes == 0
    )
    more = select(func.count()).select_from(ReviewQueue).where(ReviewQueue.tier == MORE, not_mine(annotator))
    if wnid:
        fresh, more = fresh.where(ReviewCount.wnid == wnid), more.where(ReviewQueue.wnid == wnid)
    return int(session.scalar(fresh) or 0) + int(session.scalar(more) or 0)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of a share."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def accepts_left(state: ranker.RankerState, left: int) -> dict[str, Any]:
    """The estimate of accepts among ``left`` pairs, its interval and its basis, from the random share."""
    accepts, votes = state.drawn
    if not votes:
        return {
            "estimate": None,
            "interval": None,
            "accept_rate": None,
            "sampled_votes": 0,
            "basis": "no vote yet on a pair served at random (the random share is the estimate's sample)",
        }
    low, high = wilson(accepts, votes)
    return {
        "estimate": round(left * accepts / votes),
        "interval": [math.floor(left * low), math.ceil(left * high)],
        "accept_rate": accepts / votes,
        "sampled_votes": votes,
        "basis": f"{left} pairs left x the accept share of {votes} votes on pairs served at random "
        f"({accepts} accept: {accepts / votes:.3f}, 95 % interval {low:.3f}-{high:.3f})",
    }


def review_progress(session: Session) -> dict[str, Any]:
    """Pairs in the queue, reviewed (closed by the rule), accepted, votes per reviewed pair, open
    pairs and the estimate of accepts among them."""
    rows = session.execute(
        select(ReviewQueue.tier, ReviewQueue.outcome, func.count(), func.sum(ReviewQueue.votes)).group_by(
            ReviewQueue.tier, ReviewQueue.outcome
        )
    ).all()
    closed = sum(n for tier, _, n, _ in rows if tier == CLOSED)
    votes_closed = sum(v or 0 for tier, _, _, v in rows if tier == CLOSED)
    open_pairs = sum(n for tier, _, n, _ in rows if tier in (MORE, FRESH))
    state, _ = ranker.load(session)
    rule = session.scalar(select(Meta.value).where(Meta.key == consensus.RULE_KEY))
    return {
        "pairs": closed + open_pairs,
        "reviewed": closed,
        "accepted": sum(n for tier, outcome, n, _ in rows if tier == CLOSED and outcome == "accept"),
        "votes_per_pair": votes_closed / closed if closed else None,
        "open": open_pairs,
        "waiting_for_votes": sum(n for tier, _, n, _ in rows if tier == MORE),
        "rule": rule,
        "accepts_left": accepts_left(state, open_pairs),
    }


def progress_line(progress: dict[str, Any]) -> str:
    """One line for ``curation status``."""
    per = progress["votes_per_pair"]
    left = progress["accepts_left"]
    estimate = (
        "n/a" if left["estimate"] is None else f"~{left['estimate']} ({left['interval'][0]}-{left['interval'][1]})"
    )
    return (
        f"review: {progress['reviewed']} of {progress['pairs']} pairs reviewed, {progress['accepted']} accepted, "
        f"{'n/a' if per is None else f'{per:.2f}'} votes per reviewed pair; {progress['open']} open, "
        f"estimated accepts among them {estimate} [{left['basis']}]"
    )
