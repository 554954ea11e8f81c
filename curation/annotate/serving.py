"""Which pairs the v1 API serves next, read from ``review_queue`` so a page costs O(page).

A page is filled in this order: pairs that need one more vote (``MORE``: another reviewer's vote
left them open; each is first settled under the consensus rule, which closes any that an import or
a rule change left open), then fresh pairs. Under ``order = "learned"`` a share RANDOM_SHARE of the
fresh ones is drawn at random (a random hash to start from, the hash index onwards) and marked
``drawn``: the unbiased sample the estimate of accepts left rests on; the rest come from a window of
the WINDOW_FACTOR x page best stored scores, scored again by the current model and served best
first. Each page also re-scores SWEEP fresh pairs whose score is oldest (new pairs first), so the
whole queue follows the model at O(page) per page. ``order = "hash"`` serves fresh pairs in hash
order (random with respect to content; every one counts as drawn). Whatever the order, the queue
ends only when no open pair is left: every pair is served.
"""

from __future__ import annotations

import functools
import math
import secrets
from dataclasses import dataclass, field

from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.orm import Session

from curation.annotate import accuracy, consensus, ranker
from curation.catalog import CLOSED, FRESH, MORE, Annotation, ReviewQueue

LEARNED, HASH = "learned", "hash"
ORDERS = (LEARNED, HASH)
RANDOM_SHARE = 0.05  # of each served batch, at least one pair (the guard)
WINDOW_FACTOR = 4  # the window re-ranked per page, in pages
SWEEP = 256  # fresh pairs re-scored per page: 100k pairs follow a new model within ~400 pages
PAGE_LOCK = 0x5245_5649_4557  # PostgreSQL advisory-lock key of serving a page ("REVIEW")
MORE_READ = 4  # MORE pairs read per slot: the rest were settled closed or are the reader's own


@dataclass
class Page:
    """The pairs to serve, best first, and how each was chosen."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    how: dict[tuple[str, str], str] = field(default_factory=dict)  # "more_votes" | "random" | "ranked" | "hash"
    scores: dict[tuple[str, str], float] = field(default_factory=dict)
    state: ranker.RankerState = field(default_factory=ranker.RankerState)  # the model that chose them

    def add(self, pair: tuple[str, str], how: str, score: float | None = None) -> None:
        if pair not in self.how:
            self.pairs.append(pair)
            self.how[pair] = how
            if score is not None:
                self.scores[pair] = score


@functools.lru_cache(maxsize=256)
def not_mine(annotator: str):  # noqa: ANN201 - an SQL expression, built once per annotator
    """Pairs ``annotator`` has no verdict on (a skip included)."""
    return ~exists().where(
        and_(
            Annotation.sha256 == ReviewQueue.sha256,
            Annotation.wnid == ReviewQueue.wnid,
            Annotation.annotator == annotator,
        )
    )


def next_page(
    session: Session, annotator: str, rule: consensus.Rule, order: str, limit: int, wnid: str | None = None
) -> Page:
    """The next ``limit`` pairs for ``annotator`` (of class ``wnid`` if given), never one they decided."""
    serialise_pages(session)
    state = ranker.learn(session)  # O(new votes): also the random share's tally, whatever the order
    page = Page(state=state)
    share = max(1, math.ceil(RANDOM_SHARE * limit)) if order == LEARNED else 0
    more_votes(session, page, annotator, rule, state, max(limit - share, 1), wnid)
    if order == HASH:
        for pair in hash_order(session, annotator, limit - len(page.pairs), wnid, after=None):
            page.add(pair, "hash")
        mark_drawn(session, [p for p, how in page.how.items() if how == "hash"])
    else:  # the random share first (even on a page of pairs needing votes), then the ranked window
        for pair in random_draws(session, annotator, min(share, limit - len(page.pairs)), wnid):
            page.add(pair, "random")
        ranked(session, page, annotator, state, limit, wnid)
        mark_drawn(session, [p for p, how in page.how.items() if how == "random"])
    if len(page.pairs) < limit:  # no fresh pair left: the page is all pairs needing votes
        more_votes(session, page, annotator, rule, state, limit, wnid)
    if order == LEARNED:
        sweep(session, state, wnid)
    return page


def serialise_pages(session: Session) -> None:
    """A page writes scores and draws over many rows: one page at a time per catalog (SQLite: the
    write lock first; PostgreSQL: a transaction advisory lock), so two pages never lock rows in
    crossing orders. A decision locks only its own pair's row and never waits on a page."""
    if session.get_bind().dialect.name == "sqlite":
        connection = session.connection()
        if not connection.connection.dbapi_connection.in_transaction:  # a caller's open one already writes
            connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        session.execute(select(func.pg_advisory_xact_lock(PAGE_LOCK)))


def open_rows(annotator: str, tier: int, wnid: str | None):  # noqa: ANN201 - a select
    stmt = select(ReviewQueue.sha256, ReviewQueue.wnid, ReviewQueue.score).where(
        ReviewQueue.tier == tier, not_mine(annotator)
    )
    return stmt.where(ReviewQueue.wnid == wnid) if wnid else stmt


def more_votes(
    session: Session,
    page: Page,
    annotator: str,
    rule: consensus.Rule,
    state: ranker.RankerState,
    limit: int,
    wnid: str | None,
) -> None:
    """Serve first the pairs that need one more vote; settle each (an import may have closed it)."""
    rows = session.execute(
        open_rows(annotator, MORE, wnid).order_by(ReviewQueue.score.desc()).limit(MORE_READ * limit)
    ).all()
    if not rows:
        return
    weights = accuracy.current(session) if rule.kind == consensus.DYNAMIC else accuracy.Weights()
    for sha, w, score in rows:
        if len(page.pairs) >= limit:
            break
        if consensus.settle(session, rule, sha, w, state, weights) is None:
            page.add((sha, w), "more_votes", score)


def hash_order(
    session: Session, annotator: str, limit: int, wnid: str | None, after: tuple[str, str] | None
) -> list[tuple[str, str]]:
    """Fresh pairs in (sha256, wnid) order from ``after`` on."""
    stmt = open_rows(annotator, FRESH, wnid)
    if after is not None:
        stmt = stmt.where(
            (ReviewQueue.sha256 > after[0]) | and_(ReviewQueue.sha256 == after[0], ReviewQueue.wnid > after[1])
        )
    rows = session.execute(stmt.order_by(ReviewQueue.sha256, ReviewQueue.wnid).limit(limit)).all()
    return [(sha, w) for sha, w, _ in rows]


def random_draws(session: Session, annotator: str, k: int, wnid: str | None) -> list[tuple[str, str]]:
    """``k`` fresh pairs from a random point of the hash order (wrapping around): a uniform draw,
    since an image's SHA-256 says nothing of its content."""
    start = (secrets.token_hex(32), "")
    pairs = hash_order(session, annotator, k, wnid, after=start)
    if len(pairs) < k:
        pairs += [p for p in hash_order(session, annotator, k - len(pairs), wnid, after=None) if p not in pairs]
    return pairs


def ranked(
    session: Session, page: Page, annotator: str, state: ranker.RankerState, limit: int, wnid: str | None
) -> None:
    """Fill ``page`` from the window of best stored scores, scored again by the model in force."""
    window = WINDOW_FACTOR * limit
    rows = session.execute(open_rows(annotator, FRESH, wnid).order_by(ReviewQueue.score.desc()).limit(window)).all()
    pairs = [(sha, w) for sha, w, _ in rows if (sha, w) not in page.how]
    scores = ranker.score(state, session, pairs)
    ranker.write_scores(session, scores, state.version)
    for pair in sorted(pairs, key=lambda p: -scores[p]):
        if len(page.pairs) >= limit:
            break
        page.add(pair, "ranked", scores[pair])


def sweep(session: Session, state: ranker.RankerState, wnid: str | None) -> None:
    """Re-score the SWEEP fresh pairs scored longest ago (of class ``wnid``, if given)."""
    stmt = select(ReviewQueue.sha256, ReviewQueue.wnid).where(
        ReviewQueue.tier == FRESH, ReviewQueue.scored < state.version
    )
    if wnid:
        stmt = stmt.where(ReviewQueue.wnid == wnid)
    pairs = [(sha, w) for sha, w in session.execute(stmt.order_by(ReviewQueue.scored).limit(SWEEP))]
    ranker.write_scores(session, ranker.score(state, session, pairs), state.version)


def mark_drawn(session: Session, pairs: list[tuple[str, str]]) -> None:
    """Mark ``pairs`` as served at random (the estimate's sample)."""
    if pairs:
        session.execute(update(ReviewQueue), [{"sha256": s, "wnid": w, "drawn": True} for s, w in sorted(pairs)])


def top_class(session: Session, annotator: str, order: str) -> str | None:
    """The class a grid page should show next: that of the best open pair for ``annotator``."""
    for tier in (MORE, FRESH):
        stmt = select(ReviewQueue.wnid).where(ReviewQueue.tier == tier, not_mine(annotator))
        stmt = stmt.order_by(ReviewQueue.score.desc() if order == LEARNED else ReviewQueue.sha256)
        found = session.scalar(stmt.limit(1))
        if found:
            return found
    return None


def is_closed(session: Session, sha256: str, wnid: str) -> bool:
    """Whether the consensus rule is done with (sha256, wnid)."""
    return (
        session.scalar(select(ReviewQueue.tier).where(ReviewQueue.sha256 == sha256, ReviewQueue.wnid == wnid)) == CLOSED
    )
