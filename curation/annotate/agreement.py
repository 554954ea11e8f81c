"""Agreement between annotators: per-class accept rate, pairwise agreement, Fleiss' kappa,
and the list of pairs whose votes conflict. Skips are not votes and count nowhere."""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation.annotate.queue import SKIP, class_names
from curation.catalog import VERDICTS, Annotation

VOTE_VERDICTS = tuple(v for v in VERDICTS if v != SKIP)


def fleiss_kappa(counts: list[list[int]]) -> float | None:
    """Fleiss' kappa of a subjects x categories table of rating counts.

    Subjects may have different numbers of raters (each needs at least two; others are
    ignored). None when undefined: no subject with two raters, or one category only.
    """
    rows = [row for row in counts if sum(row) >= 2]
    if not rows:
        return None
    n_categories = len(rows[0])
    total = sum(sum(row) for row in rows)
    shares = [sum(row[j] for row in rows) / total for j in range(n_categories)]
    expected = sum(p * p for p in shares)
    observed = sum((sum(c * c for c in row) - sum(row)) / (sum(row) * (sum(row) - 1)) for row in rows) / len(rows)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def _votes(session: Session) -> dict[tuple[str, str], dict[str, str]]:
    """(sha256, wnid) -> {annotator: verdict}, skips left out."""
    items: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for sha, wnid, annotator, verdict in session.execute(
        select(Annotation.sha256, Annotation.wnid, Annotation.annotator, Annotation.verdict).where(
            Annotation.verdict != SKIP
        )
    ):
        items[(sha, wnid)][annotator] = verdict
    return items


def agreement_stats(session: Session) -> dict[str, Any]:
    """Every agreement number the stats page and ``curation annotate stats`` show, JSON-ready."""
    items = _votes(session)
    per_annotator: Counter[str] = Counter()
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    pair_total: Counter[tuple[str, str]] = Counter()
    pair_agree: Counter[tuple[str, str]] = Counter()
    table, binary = [], []
    conflicts = 0
    for (_sha, wnid), votes in items.items():
        per_annotator.update(votes.keys())
        per_class[wnid].update(votes.values())
        per_class[wnid]["__items__"] += 1
        if len(votes) >= 2:
            counts = Counter(votes.values())
            table.append([counts.get(v, 0) for v in VOTE_VERDICTS])
            binary.append([counts.get("accept", 0), len(votes) - counts.get("accept", 0)])
            conflicts += len(counts) > 1
            for (a, va), (b, vb) in combinations(sorted(votes.items()), 2):
                pair_total[(a, b)] += 1
                pair_agree[(a, b)] += va == vb
    names = class_names(session, set(per_class))
    classes = []
    for wnid in sorted(per_class):
        counts = per_class[wnid]
        n_votes = sum(counts[v] for v in VOTE_VERDICTS)
        classes.append(
            {
                "wnid": wnid,
                "name": names.get(wnid, wnid),
                "images": counts["__items__"],
                "votes": n_votes,
                "accepts": counts["accept"],
                "accept_rate": counts["accept"] / n_votes if n_votes else None,
                **{v: counts[v] for v in VOTE_VERDICTS},
            }
        )
    total_pairs = sum(pair_total.values())
    return {
        "votes": sum(per_annotator.values()),
        "images": len(items),
        "images_multi": len(table),
        "conflicts": conflicts,
        "annotators": dict(sorted(per_annotator.items())),
        "accept_rate": (sum(c["accepts"] for c in classes) / sum(c["votes"] for c in classes)) if classes else None,
        "pairwise_agreement": sum(pair_agree.values()) / total_pairs if total_pairs else None,
        "pairs": [
            {"a": a, "b": b, "images": pair_total[(a, b)], "agreement": pair_agree[(a, b)] / pair_total[(a, b)]}
            for a, b in sorted(pair_total)
        ],
        "fleiss_kappa": fleiss_kappa(table),
        "fleiss_kappa_accept": fleiss_kappa(binary),
        "per_class": classes,
    }


def summary_line(stats: dict[str, Any]) -> str:
    """One line for `curation status`: votes, annotators, agreement and kappa."""

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return (
        f"annotation: {stats['votes']} votes by {len(stats['annotators'])} annotator(s) on {stats['images']} images; "
        f"{stats['images_multi']} with 2+ votes, {stats['conflicts']} conflicting; "
        f"pairwise agreement {fmt(stats['pairwise_agreement'])}, Fleiss' kappa {fmt(stats['fleiss_kappa'])} "
        f"(accept vs not {fmt(stats['fleiss_kappa_accept'])})"
    )


def conflicts(session: Session) -> list[dict[str, Any]]:
    """Pairs whose (non-skip) votes disagree, with every vote and note, by class then image."""
    notes = {
        (a.sha256, a.wnid, a.annotator): a.note
        for a in session.scalars(select(Annotation).where(Annotation.verdict != SKIP))
    }
    rows = []
    for (sha, wnid), votes in sorted(_votes(session).items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if len(set(votes.values())) < 2:
            continue
        rows.append(
            {
                "sha256": sha,
                "wnid": wnid,
                "votes": [
                    {"annotator": a, "verdict": v, "note": notes.get((sha, wnid, a))} for a, v in sorted(votes.items())
                ],
                "tally": dict(Counter(votes.values()).most_common()),
            }
        )
    names = class_names(session, {r["wnid"] for r in rows})
    for row in rows:
        row["class_name"] = names.get(row["wnid"], row["wnid"])
    return rows
