"""When a pair has votes enough: ``[annotate] consensus = "fixed"`` (``votes_needed`` non-skip votes,
accepted by majority, as ``catalog.accepted_query``) or ``"dynamic"`` (votes decided on the fly).

Dynamic: the posterior that the pair is a true one, in log-odds, is the prior plus, per vote,
+/- logit(accuracy of that vote) (accept / any reject). The prior is the learned order's P(accept)
once it has learned ``ranker.MIN_VOTES`` votes, else the class's acceptance rate so far, clipped to
[PRIOR_MIN, PRIOR_MAX] so that no prior alone decides. A vote's accuracy combines its annotator's and
its class's (added in log-odds around the overall accuracy), estimated from agreement by a one-coin
Dawid-Skene EM over a bounded sample of multi-vote pairs (``accuracy.py``). The pair closes as an
accept at posterior >= ACCEPT_AT with at least one human accept, as a reject at <= REJECT_AT, and at
MAX_VOTES by the posterior's side of 0.5 (accept again only with a human accept); otherwise it asks
for another vote, and such pairs are served before fresh ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from curation.annotate import accuracy, ranker
from curation.catalog import CLOSED, MORE, Annotation, Meta, ReviewQueue
from curation.catalog.queries import AUTOMATIC_ANNOTATORS, CONSENSUS_RULE_KEY

FIXED, DYNAMIC = "fixed", "dynamic"
CONSENSUS = (DYNAMIC, FIXED)
# Thresholds: on the review benchmark (seed 1, five reviewers 0.95 / 0.80 accurate) 0.98 / 0.01 with
# the stored (stale) scores as priors asked most rejects for a second vote (2.2 votes per pair,
# precision 0.86 against fixed-3's 0.70, recall 0.94 against 0.955); the prior is now scored fresh and
# a reject closes at 0.02.
ACCEPT_AT, REJECT_AT = 0.98, 0.02
MAX_VOTES = 5
PRIOR_MIN, PRIOR_MAX = 0.02, 0.9
RULE_KEY = CONSENSUS_RULE_KEY  # catalog_meta: the rule that closed the CLOSED pairs (accepted_query reads it)
AUTOMATIC = AUTOMATIC_ANNOTATORS  # annotators that are not people


@dataclass(frozen=True)
class Rule:
    """The consensus rule in force."""

    kind: str = DYNAMIC
    votes_needed: int = 1

    def describe(self) -> str:
        if self.kind == FIXED:
            majority = self.votes_needed // 2 + 1
            return (
                f"fixed: a pair closes at {self.votes_needed} non-skip vote(s); accepted when at least {majority} "
                "are 'accept' and more than half are"
            )
        return (
            f"dynamic: votes until the posterior that the pair is true (prior: the learned order's P(accept), "
            f"else the class's accept rate, clipped to [{PRIOR_MIN}, {PRIOR_MAX}]; each vote weighs the logit of its "
            f"annotator's and class's accuracy, estimated from agreement) reaches >= {ACCEPT_AT} with a human "
            f"accept (accepted) or <= {REJECT_AT} (rejected); at {MAX_VOTES} votes the posterior's side of 0.5 decides"
        )

    def key(self) -> str:
        return f"{self.kind}:{self.votes_needed}" if self.kind == FIXED else f"{self.kind}:{ACCEPT_AT}:{REJECT_AT}"


def judge(rule: Rule, votes: dict[str, str], prior: float, weights: accuracy.Weights, wnid: str) -> str | None:
    """``accept`` / ``reject`` when the pair's ``votes`` (annotator -> non-skip verdict) close it, else None."""
    accepts = sum(v == "accept" for v in votes.values())
    human_accept = any(v == "accept" and a not in AUTOMATIC for a, v in votes.items())
    if rule.kind == FIXED:
        if len(votes) < rule.votes_needed:
            return None
        return "accept" if accepts >= rule.votes_needed // 2 + 1 and 2 * accepts > len(votes) else "reject"
    p = posterior(votes, prior, weights, wnid)
    if p >= ACCEPT_AT and human_accept:
        return "accept"
    if p <= REJECT_AT:
        return "reject"
    if sum(a not in AUTOMATIC for a in votes) >= MAX_VOTES:
        return "accept" if p >= 0.5 and human_accept else "reject"
    return None


def posterior(votes: dict[str, str], prior: float, weights: accuracy.Weights, wnid: str) -> float:
    """P(the pair is true | its votes), a naive-Bayes sum of log-odds; automatic votes (an accept
    of everything unseen) carry no evidence and are left out."""
    prior = min(max(prior, PRIOR_MIN), PRIOR_MAX)
    z = math.log(prior / (1 - prior))
    for annotator, verdict in votes.items():
        if annotator in AUTOMATIC:
            continue
        w = weights.log_odds(annotator, wnid)
        z += w if verdict == "accept" else -w
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def prior_of(session: Session, state: ranker.RankerState, row: ReviewQueue) -> float:
    """The pair's prior: the model in force's P(accept) once it is trusted (scored now: a stored score
    may be many versions old), else the class's accept rate."""
    if state.trusted():
        return ranker.score(state, session, [(row.sha256, row.wnid)])[(row.sha256, row.wnid)]
    return state.class_rate(row.wnid)


def settle(
    session: Session, rule: Rule, sha256: str, wnid: str, state: ranker.RankerState, weights: accuracy.Weights
) -> str | None:
    """Close (sha256, wnid) if its votes suffice under ``rule``: the outcome, else None (still open)."""
    row = session.get(ReviewQueue, (sha256, wnid))
    if row is None:
        return None
    if row.tier == CLOSED:
        return row.outcome
    rows = session.execute(
        select(Annotation.annotator, Annotation.verdict).where(
            Annotation.sha256 == sha256, Annotation.wnid == wnid, Annotation.verdict != "skip"
        )
    )
    votes = {annotator: verdict for annotator, verdict in rows}
    prior = prior_of(session, state, row) if votes and rule.kind == DYNAMIC else 0.5
    outcome = judge(rule, votes, prior, weights, wnid) if votes else None
    if outcome is not None:
        row.tier, row.outcome = CLOSED, outcome
        session.flush()
    return outcome


def adopt(session: Session, rule: Rule) -> bool:
    """Make ``rule`` the one in force: when it differs from the one that closed the pairs, reopen every
    closed pair (the server settles them again as it meets them); whether it changed."""
    row = session.get(Meta, RULE_KEY)
    if row is not None and row.value == rule.key():
        return False
    session.execute(update(ReviewQueue).where(ReviewQueue.tier == CLOSED).values(tier=MORE, outcome=None))
    if row is None:
        session.add(Meta(key=RULE_KEY, value=rule.key()))
    else:
        row.value = rule.key()
    return True
