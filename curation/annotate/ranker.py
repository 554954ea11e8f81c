"""The learned review order: a small logistic model of P(a reviewer accepts the pair), updated as votes
arrive, over what the catalog already holds about a pair: the filter's probability of the pair's own
class (``class_prob``), its top-1 confidence, the class's rank and the top-2 margin, the class's
acceptance rate so far, and the source and search query that found the image (hashed into a few
buckets). It starts as the filter's p(class) order (all weight on log p(class)) and moves as votes
come in: every call of ``learn`` reads only the votes newer than its cursor (O(new)).

The model is scikit-learn's ``SGDClassifier`` (log loss) trained by ``partial_fit``; its state (the
coefficients, the vote cursor, the per-class tallies, and the accepts among randomly drawn pairs that
the estimate of accepts left needs) lives in ``catalog_meta`` as JSON, so every server on a catalog
shares it. Two servers learning at once: the second write loses (compare-and-set), and its votes are
learned again from the unchanged cursor, so none is lost or counted twice.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from curation.catalog import Annotation, Candidate, Meta, Prediction, ReviewQueue
from curation.dialect import insert_ignore

STATE_KEY = "annotate:ranker"
SKIP = "skip"
BUCKETS = 8  # hashed buckets for the source and for the query: a handful of sources, queries per class
BASE = ("log_p", "log_conf", "log_rank", "margin", "log_p_x_conf", "log_p_x_rank", "rank2", "log_p_over_conf",
        "class_rate", "no_p")  # fmt: skip
N_FEATURES = len(BASE) + 2 * BUCKETS
P_FLOOR = 1e-6  # log p(class) floor: the 200-way softmax of a confident mistake goes below 1e-4
P_SCALE = 5.0  # log_p is divided by it (a unit-scale feature for SGD); its start weight undoes that
# SGD step, passes over each batch of new votes, L2 strength: on two of the review benchmark's queues
# (50 % confusable negatives) one pass at 0.02 found 0.55 of the true pairs in the first 25 % (the
# p(class) order's share), ten at 0.05 found 0.78 with the early finds' median p(class) 1.26-1.37x that of
# all true pairs; 0.1 x 5 and 0.2 x 3 came close, 0.05 x 20 overfitted (0.75).
ETA, EPOCHS, ALPHA = 0.05, 10, 1e-4
MIN_VOTES = 100  # votes before the model's probability is trusted as a consensus prior
LEARN_BATCH = 5000  # newest votes read per call at most (a big import is learned over several calls)


@dataclass
class RankerState:
    """What the model knows: weights, the vote cursor and the tallies it keeps."""

    coef: list[float] = field(default_factory=lambda: [P_SCALE] + [0.0] * (N_FEATURES - 1))
    intercept: float = 0.0
    steps: float = 1.0  # SGD's t_
    version: int = 1  # bumped by every update; review_queue.scored says which version scored a row
    cursor: int = 0  # annotations.id learned up to
    votes: int = 0  # votes learned
    classes: dict[str, list[int]] = field(default_factory=dict)  # wnid -> [accepts, votes]
    drawn: list[int] = field(default_factory=lambda: [0, 0])  # [accepts, votes] on randomly drawn pairs

    def class_rate(self, wnid: str) -> float:
        """Smoothed accept rate of the class (add-one towards the overall rate)."""
        acc, n = self.classes.get(wnid, [0, 0])
        total_acc = sum(a for a, _ in self.classes.values())
        total = sum(v for _, v in self.classes.values())
        overall = (total_acc + 1) / (total + 2)
        return (acc + 2 * overall) / (n + 2)

    def trusted(self) -> bool:
        """Whether the model has seen enough votes to be a calibrated P(accept)."""
        return self.votes >= MIN_VOTES


def load(session: Session) -> tuple[RankerState, str | None]:
    """The stored state (a fresh one when there is none) and its raw text for compare-and-set."""
    row = session.get(Meta, STATE_KEY)
    if row is None:
        return RankerState(), None
    state = RankerState(**json.loads(row.value))
    if len(state.coef) != N_FEATURES:  # written by a version with other features: start again from p(class)
        state.coef, state.intercept, state.steps = RankerState().coef, 0.0, 1.0
    return state, row.value


def save(session: Session, state: RankerState, old: str | None) -> bool:
    """Write ``state`` unless another server changed it since ``old`` was read; whether it was written."""
    text = json.dumps(state.__dict__, separators=(",", ":"))
    if old is None:
        return bool(insert_ignore(session, Meta, [{"key": STATE_KEY, "value": text}], count=True))
    result = session.execute(update(Meta).where(Meta.key == STATE_KEY, Meta.value == old).values(value=text))
    return bool(result.rowcount)


def _bucket(text: str | None, offset: int) -> int:
    return len(BASE) + offset + zlib.crc32((text or "").encode()) % BUCKETS


def pair_facts(session: Session, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The filter's outputs (over all its models: the highest p and confidence, the best rank, the
    smallest margin) and the first candidate's source and query, per pair."""
    wanted = set(pairs)
    shas = sorted({sha for sha, _ in wanted})
    facts: dict[tuple[str, str], dict[str, Any]] = {pair: {} for pair in wanted}
    for start in range(0, len(shas), 500):
        chunk = shas[start : start + 500]
        rows = session.execute(
            select(
                Prediction.sha256,
                Prediction.wnid,
                Prediction.class_prob,
                Prediction.confidence,
                Prediction.class_rank,
                Prediction.margin,
            ).where(Prediction.sha256.in_(chunk), Prediction.status == "ok")
        )
        for sha, wnid, p, conf, rank, margin in rows:
            fact = facts.get((sha, wnid))
            if fact is None:
                continue
            if p is not None:
                fact["p"] = max(p, fact.get("p", 0.0))
            if conf is not None:
                fact["conf"] = max(conf, fact.get("conf", 0.0))
            if rank is not None:
                fact["rank"] = min(rank, fact.get("rank", rank))
            if margin is not None:
                fact["margin"] = min(margin, fact.get("margin", margin))
        sources = session.execute(
            select(Candidate.image_sha256, Candidate.wnid, Candidate.source, Candidate.query).where(
                Candidate.image_sha256.in_(chunk)
            )
        )
        for sha, wnid, source, query in sources:
            fact = facts.get((sha, wnid))
            if fact is not None and "source" not in fact:
                fact.update(source=source, query=query)
    return facts


def features(fact: dict[str, Any], class_rate: float) -> np.ndarray:
    """One pair's feature vector (``BASE`` then the hashed source and query)."""
    x = np.zeros(N_FEATURES)
    p = fact.get("p")
    log_p = math.log(max(p, P_FLOOR)) / P_SCALE if p is not None else math.log(P_FLOOR) / P_SCALE
    log_conf = math.log(max(fact.get("conf") or 0.0, P_FLOOR)) / 2.0
    log_rank = math.log(fact.get("rank") or 1) / 3.0
    margin = min(abs(fact.get("margin") or 0.0), 10.0) / 10.0
    rate = min(max(class_rate, 0.01), 0.99)
    x[: len(BASE)] = (
        log_p,
        log_conf,
        log_rank,
        margin,
        log_p * log_conf,
        log_p * log_rank,
        1.0 if fact.get("rank") == 2 else 0.0,  # the runner-up: where confusable wrong labels sit
        log_p - log_conf * 2.0 / P_SCALE,  # log(p / top-1 confidence) / P_SCALE: how far below the top
        math.log(rate / (1 - rate)) / 3.0,
        0.0 if p is not None else 1.0,
    )
    x[_bucket(fact.get("source"), 0)] = 1.0
    x[_bucket(fact.get("query"), BUCKETS)] = 1.0
    return x


def score(state: RankerState, session: Session, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], float]:
    """P(accept) under the model for each pair (one read of their facts)."""
    if not pairs:
        return {}
    facts = pair_facts(session, pairs)
    X = np.stack([features(facts[pair], state.class_rate(pair[1])) for pair in pairs])
    z = X @ np.asarray(state.coef) + state.intercept
    return dict(zip(pairs, (1.0 / (1.0 + np.exp(-z))).tolist(), strict=True))


def learn(session: Session) -> RankerState:
    """Read the votes newer than the cursor, fit the model on them, store it; the state in force."""
    state, old = load(session)
    rows = session.execute(
        select(Annotation.id, Annotation.sha256, Annotation.wnid, Annotation.verdict)
        .where(Annotation.id > state.cursor)
        .order_by(Annotation.id)
        .limit(LEARN_BATCH)
    ).all()
    if not rows:
        return state
    state.cursor = rows[-1][0]
    votes = [(sha, wnid, verdict == "accept") for _id, sha, wnid, verdict in rows if verdict != SKIP]
    if votes:
        fit(state, session, votes)
        tally_drawn(state, session, [(i, sha, wnid, v == "accept") for i, sha, wnid, v in rows if v != SKIP])
    if not save(session, state, old):
        return load(session)[0]  # another server learned these first
    return state


def fit(state: RankerState, session: Session, votes: list[tuple[str, str, bool]]) -> None:
    """``EPOCHS`` passes of ``partial_fit`` over ``votes`` (sha256, wnid, accepted), each seen with the
    class rate of before it; then the per-class tallies."""
    from sklearn.linear_model import SGDClassifier  # imported on the first vote: ~0.6 s

    pairs = [(sha, wnid) for sha, wnid, _ in votes]
    facts = pair_facts(session, pairs)
    rows = []
    for sha, wnid, accepted in votes:
        rows.append(features(facts[(sha, wnid)], state.class_rate(wnid)))
        tally = state.classes.setdefault(wnid, [0, 0])
        tally[0] += int(accepted)
        tally[1] += 1
    model = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=ETA, alpha=ALPHA)
    model.classes_ = np.array([0, 1])
    model.coef_ = np.asarray([state.coef], dtype=float)
    model.intercept_ = np.asarray([state.intercept], dtype=float)
    model.t_ = state.steps
    model.n_features_in_ = N_FEATURES
    X, y = np.stack(rows), np.array([int(a) for *_, a in votes])
    for _ in range(EPOCHS):  # O(new votes x EPOCHS): never the queue
        model.partial_fit(X, y)
    state.coef, state.intercept = model.coef_[0].tolist(), float(model.intercept_[0])
    state.steps, state.version, state.votes = float(model.t_), state.version + 1, state.votes + len(votes)


def tally_drawn(state: RankerState, session: Session, votes: list[tuple[int, str, str, bool]]) -> None:
    """Count, among ``votes`` (id, sha256, wnid, accepted), the first vote on each pair served at random:
    a pair-level sample (later votes come mostly to disputed and likely-true pairs, and would inflate it)."""
    drawn = drawn_pairs(session, [(sha, wnid) for _, sha, wnid, _ in votes])
    if not drawn:
        return
    first: dict[tuple[str, str], int] = {}
    shas = sorted({sha for sha, _ in drawn})
    for start in range(0, len(shas), 500):
        rows = session.execute(
            select(Annotation.sha256, Annotation.wnid, func.min(Annotation.id))
            .where(Annotation.sha256.in_(shas[start : start + 500]), Annotation.verdict != SKIP)
            .group_by(Annotation.sha256, Annotation.wnid)
        )
        first.update({(sha, wnid): low for sha, wnid, low in rows})
    for vote_id, sha, wnid, accepted in votes:
        if (sha, wnid) in drawn and first.get((sha, wnid)) == vote_id:
            state.drawn[0] += int(accepted)
            state.drawn[1] += 1


def drawn_pairs(session: Session, pairs: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of ``pairs`` that were served as the random share."""
    shas = sorted({sha for sha, _ in pairs})
    found: set[tuple[str, str]] = set()
    for start in range(0, len(shas), 500):
        rows = session.execute(
            select(ReviewQueue.sha256, ReviewQueue.wnid).where(
                ReviewQueue.sha256.in_(shas[start : start + 500]), ReviewQueue.drawn.is_(True)
            )
        )
        found.update((sha, wnid) for sha, wnid in rows)
    return found & set(pairs)


def write_scores(session: Session, scores: dict[tuple[str, str], float], version: int) -> None:
    """Store the model's scores (and the version that wrote them) in ``review_queue``."""
    if scores:  # in key order: two servers writing overlapping sets lock rows in one order (no deadlock)
        session.execute(
            update(ReviewQueue),
            [{"sha256": s, "wnid": w, "score": p, "scored": version} for (s, w), p in sorted(scores.items())],
        )
