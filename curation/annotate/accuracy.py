"""Reviewer accuracy estimated from agreement: a one-coin Dawid-Skene EM (each vote is right with the
probability of its annotator, and separately of its class), over a bounded sample of the pairs that
hold two or more votes, refreshed every REFRESH new votes and kept in ``catalog_meta``.

E-step: each sampled pair's P(true) from its votes under the current accuracies (flat prior).
M-step: an annotator's (a class's) accuracy is the expected share of its votes that agree with the
truth, shrunk towards PRIOR_ACCURACY by PRIOR_STRENGTH pseudo-votes (a new reviewer is 0.9 until
their agreements say otherwise). A vote weighs logit(annotator) + logit(class) - logit(overall).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from curation.catalog import Annotation, Meta
from curation.dialect import upsert

STATE_KEY = "annotate:accuracy"
PRIOR_ACCURACY, PRIOR_STRENGTH = 0.9, 10.0
SAMPLE_VOTES = 20000  # newest votes read per refresh: its pairs with 2+ votes are the EM's sample
REFRESH = 200  # new votes between refreshes
ITERATIONS = 10  # EM rounds: the accuracies move < 0.001 after ~6 on the benchmark's votes
CLIP = (0.55, 0.995)  # an accuracy is never taken as a coin flip or as certainty


def _logit(p: float) -> float:
    p = min(max(p, CLIP[0]), CLIP[1])
    return math.log(p / (1 - p))


@dataclass
class Weights:
    """Accuracies by annotator and class, and the vote count they were fitted at."""

    annotators: dict[str, float] = field(default_factory=dict)
    classes: dict[str, float] = field(default_factory=dict)
    overall: float = PRIOR_ACCURACY
    fitted_at: int = 0  # the newest annotations.id the fit saw
    pairs: int = 0  # multi-vote pairs in its sample

    def log_odds(self, annotator: str, wnid: str) -> float:
        """The log-odds weight of one vote by ``annotator`` on a pair of class ``wnid``."""
        base = _logit(self.overall)
        return max(
            _logit(self.annotators.get(annotator, self.overall)) + _logit(self.classes.get(wnid, self.overall)) - base,
            _logit(CLIP[0]),
        )


def load(session: Session) -> Weights:
    row = session.get(Meta, STATE_KEY)
    return Weights(**json.loads(row.value)) if row is not None else Weights()


def current(session: Session) -> Weights:
    """The stored accuracies, refitted first when REFRESH votes arrived since."""
    weights = load(session)
    newest = session.scalar(select(func.max(Annotation.id))) or 0
    if newest - weights.fitted_at < REFRESH:
        return weights
    fitted = fit(sample(session, newest))
    fitted.fitted_at = newest
    text = json.dumps(fitted.__dict__, separators=(",", ":"))
    upsert(session, Meta, {"key": STATE_KEY, "value": text}, keys=["key"], update=["value"])
    return fitted


def sample(session: Session, newest: int) -> list[tuple[str, dict[str, str]]]:
    """(wnid, {annotator: accepted?}) of the multi-vote pairs among the newest SAMPLE_VOTES votes' pairs."""
    recent = session.execute(
        select(Annotation.sha256, Annotation.wnid)
        .where(Annotation.id <= newest)
        .order_by(Annotation.id.desc())
        .limit(SAMPLE_VOTES)
    )
    pairs = {(sha, wnid) for sha, wnid in recent}
    shas = sorted({sha for sha, _ in pairs})
    votes: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for start in range(0, len(shas), 500):
        rows = session.execute(
            select(Annotation.sha256, Annotation.wnid, Annotation.annotator, Annotation.verdict).where(
                Annotation.sha256.in_(shas[start : start + 500]), Annotation.verdict != "skip"
            )
        )
        for sha, wnid, annotator, verdict in rows:
            if (sha, wnid) in pairs:
                votes[(sha, wnid)][annotator] = verdict
    return [(wnid, v) for (_sha, wnid), v in votes.items() if len(v) >= 2]


def fit(items: list[tuple[str, dict[str, str]]]) -> Weights:
    """The EM over ``items``; with none, the prior accuracy everywhere."""
    weights = Weights(pairs=len(items))
    for _ in range(ITERATIONS if items else 0):
        truth = []
        for wnid, votes in items:
            z = sum(weights.log_odds(a, wnid) * (1 if v == "accept" else -1) for a, v in votes.items())
            truth.append(1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0))))
        right: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        by_class: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for (wnid, votes), t in zip(items, truth, strict=True):
            for annotator, verdict in votes.items():
                agree = t if verdict == "accept" else 1.0 - t
                for tally in (right[annotator], by_class[wnid]):
                    tally[0] += agree
                    tally[1] += 1.0
        total_right = sum(r for r, _ in right.values())
        total = sum(n for _, n in right.values())
        weights.overall = (total_right + PRIOR_ACCURACY * PRIOR_STRENGTH) / (total + PRIOR_STRENGTH)
        weights.annotators = {a: _shrunk(r, n, weights.overall) for a, (r, n) in right.items()}
        weights.classes = {w: _shrunk(r, n, weights.overall) for w, (r, n) in by_class.items()}
    return weights


def _shrunk(right: float, n: float, towards: float) -> float:
    return (right + towards * PRIOR_STRENGTH) / (n + PRIOR_STRENGTH)
