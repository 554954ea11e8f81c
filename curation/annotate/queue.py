"""The review queue and everything the page shows about one (image, class) pair.

A pair is in the queue when the filter kept it and dedup did not set its image aside: an
image dedup marked ``duplicate`` or ``leaked`` is left out, a ``representative`` is shown, and
an image dedup has not looked at yet is shown too, so that review can start while dedup runs
(votes on an image that dedup later sets aside are kept but never released). A pair leaves an
annotator's queue once that annotator has a verdict on it (a skip included), and leaves every
queue once it holds ``votes_needed`` verdicts that are not skips.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.orm import Session

from curation.catalog import (
    REPRESENTATIVE,
    Annotation,
    Candidate,
    DedupStatus,
    FilterVerdict,
    Image,
    ImageClass,
    Prediction,
    ReviewCount,
)

SKIP = "skip"
# Share of the shorter side that the evaluation's resize-256 / centre-crop-224 keeps.
CENTRE_CROP_FRACTION = 224 / 256
ORDERS = ("mixed", "class")
SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
WNID_RE = re.compile(r"n[0-9]{8}\Z")


def is_sha256(value: str) -> bool:
    """Whether ``value`` is a lower-case hex SHA-256 (the only way images are named on the web)."""
    return bool(SHA256_RE.match(value))


def is_wnid(value: str) -> bool:
    """Whether ``value`` looks like a WordNet id (n + 8 digits)."""
    return bool(WNID_RE.match(value))


def web_link(url: str | None) -> str | None:
    """``url`` when it is an absolute http(s) link, else None (no javascript:, data:, relative...)."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url.strip()


def eligible(stmt: Any) -> Any:
    """Restrict a select over FilterVerdict to the pairs that may be reviewed at all."""
    return stmt.outerjoin(DedupStatus, DedupStatus.sha256 == FilterVerdict.sha256).where(
        FilterVerdict.kept.is_(True),
        or_(DedupStatus.status.is_(None), DedupStatus.status == REPRESENTATIVE),
    )


def open_for(stmt: Any, annotator: str, votes_needed: int) -> Any:
    """Restrict a select over FilterVerdict to ``annotator``'s open pairs under the fixed rule: reviewable,
    fewer than ``votes_needed`` non-skip votes, none by ``annotator``."""
    same_pair = and_(Annotation.sha256 == FilterVerdict.sha256, Annotation.wnid == FilterVerdict.wnid)
    votes = select(func.count()).where(same_pair, Annotation.verdict != SKIP).scalar_subquery()
    mine = exists().where(same_pair, Annotation.annotator == annotator)
    return eligible(stmt).where(~mine, votes < votes_needed)


def next_pairs(
    session: Session,
    annotator: str,
    votes_needed: int,
    *,
    limit: int = 20,
    after: tuple[str, str] | None = None,
    order: str = "mixed",
    wnid: str | None = None,
) -> list[tuple[str, str]]:
    """The next ``limit`` (sha256, wnid) pairs for ``annotator``, after the cursor ``after``.

    ``mixed`` orders by image hash (a stable shuffle across classes), ``class`` by class, then
    hash. Only classes ``review_counts`` says have pairs left are walked (``open_classes``, no walk
    at all when the queue is empty: at 100k pairs set aside by dedup, 165 -> a few ms); each walk
    follows the (sha256, wnid) key and stops at ``limit`` (``walk_pairs``).
    """
    classes = open_classes(session, annotator, votes_needed)
    if wnid:
        classes = [wnid] if wnid in classes else []
    if not classes:
        return []
    if order == "mixed":
        return walk_pairs(session, annotator, votes_needed, limit, after, wnid)
    pairs: list[tuple[str, str]] = []
    for class_wnid in classes:
        if after is not None and class_wnid < after[1]:
            continue
        cursor = after if after is not None and class_wnid == after[1] else None
        pairs += walk_pairs(session, annotator, votes_needed, limit - len(pairs), cursor, class_wnid)
        if len(pairs) >= limit:
            break
    return pairs


def walk_pairs(
    session: Session,
    annotator: str,
    votes_needed: int,
    limit: int,
    after: tuple[str, str] | None = None,
    wnid: str | None = None,
) -> list[tuple[str, str]]:
    """The queue's next ``limit`` pairs in hash order (of class ``wnid``, if given), by walking the
    kept pairs' index past those that are not open: the truth ``review_counts`` summarises."""
    stmt = open_for(select(FilterVerdict.sha256, FilterVerdict.wnid), annotator, votes_needed)
    if wnid:
        stmt = stmt.where(FilterVerdict.wnid == wnid)
    if after is not None:
        sha, after_wnid = after
        stmt = stmt.where(
            or_(FilterVerdict.sha256 > sha, and_(FilterVerdict.sha256 == sha, FilterVerdict.wnid > after_wnid))
        )
    rows = session.execute(stmt.order_by(FilterVerdict.sha256, FilterVerdict.wnid).limit(limit)).all()
    return [(sha, w) for sha, w in rows]


def remaining(session: Session, annotator: str, votes_needed: int, wnid: str | None = None) -> int:
    """How many pairs are still in ``annotator``'s queue, exactly: the reviewable pairs with fewer
    than ``votes_needed`` non-skip votes, less those among them ``annotator`` has a verdict on, read
    from ``review_counts`` (kept by triggers: O(classes x vote counts) rows, whatever the catalog's size)."""
    mine = case((ReviewCount.annotator == "", ReviewCount.pairs), else_=-ReviewCount.pairs)
    stmt = select(func.coalesce(func.sum(mine), 0)).where(
        ReviewCount.annotator.in_(["", annotator]), ReviewCount.votes < votes_needed
    )
    if wnid:
        stmt = stmt.where(ReviewCount.wnid == wnid)
    return int(session.scalar(stmt) or 0)


def open_classes(session: Session, annotator: str, votes_needed: int) -> list[str]:
    """The classes with pairs left in ``annotator``'s queue, in wnid order, from ``review_counts``
    (as ``remaining``: O(classes x vote counts), whatever the catalog's size)."""
    mine = case((ReviewCount.annotator == "", ReviewCount.pairs), else_=-ReviewCount.pairs)
    stmt = (
        select(ReviewCount.wnid)
        .where(ReviewCount.annotator.in_(["", annotator]), ReviewCount.votes < votes_needed)
        .group_by(ReviewCount.wnid)
        .having(func.sum(mine) > 0)
        .order_by(ReviewCount.wnid)
    )
    return list(session.scalars(stmt))


def pair_exists(session: Session, sha256: str, wnid: str) -> bool:
    """Whether (sha256, wnid) is a reviewable pair."""
    stmt = eligible(select(FilterVerdict.sha256)).where(FilterVerdict.sha256 == sha256, FilterVerdict.wnid == wnid)
    return session.execute(stmt.limit(1)).first() is not None


def class_names(session: Session, wnids: set[str]) -> dict[str, str]:
    """wnid -> display name: the catalog's name, else the first WordNet lemma, else the wnid."""
    names = dict(session.execute(select(ImageClass.wnid, ImageClass.name).where(ImageClass.wnid.in_(wnids))).all())
    missing = wnids - names.keys()
    if missing:
        from curation.synsets import wordnet_lemmas

        lemmas = wordnet_lemmas()
        for wnid in missing:
            names[wnid] = lemmas.get(wnid, wnid).split(",")[0].strip() or wnid
    return names


def describe(
    session: Session,
    pairs: list[tuple[str, str]],
    annotator: str | None = None,
    crop_fraction: float = CENTRE_CROP_FRACTION,
) -> list[dict[str, Any]]:
    """One JSON-ready dict per pair, in order: class, gloss, predictions, provenance, crop box."""
    if not pairs:
        return []
    shas = {sha for sha, _ in pairs}
    images = {img.sha256: img for img in session.scalars(select(Image).where(Image.sha256.in_(shas)))}
    glosses = dict(
        session.execute(
            select(ImageClass.wnid, ImageClass.gloss).where(ImageClass.wnid.in_({w for _, w in pairs}))
        ).all()
    )
    predictions: dict[tuple[str, str], list[Prediction]] = {}
    for pred in session.scalars(
        select(Prediction).where(Prediction.sha256.in_(shas), Prediction.status == "ok").order_by(Prediction.id)
    ):
        predictions.setdefault((pred.sha256, pred.wnid), []).append(pred)
    candidates: dict[str, list[Candidate]] = {}
    for cand in session.scalars(select(Candidate).where(Candidate.image_sha256.in_(shas)).order_by(Candidate.id)):
        candidates.setdefault(cand.image_sha256 or "", []).append(cand)
    my_votes: dict[tuple[str, str], Annotation] = {}
    if annotator:
        for ann in session.scalars(
            select(Annotation).where(Annotation.sha256.in_(shas), Annotation.annotator == annotator)
        ):
            my_votes[(ann.sha256, ann.wnid)] = ann
    names = class_names(
        session, {w for _, w in pairs} | {p.pred_wnid for ps in predictions.values() for p in ps if p.pred_wnid}
    )
    items = []
    for sha, wnid in pairs:
        img = images.get(sha)
        provenance = _provenance(candidates.get(sha, []), wnid)
        vote = my_votes.get((sha, wnid))
        items.append(
            {
                "sha256": sha,
                "wnid": wnid,
                "class_name": names.get(wnid, wnid),
                "gloss": glosses.get(wnid, ""),
                "predictions": [
                    {
                        "model": p.model,
                        "rule": p.rule,
                        "pred_wnid": p.pred_wnid,
                        "pred_name": names.get(p.pred_wnid or "", p.pred_wnid or "?"),
                        "confidence": p.confidence,
                        "top5": json.loads(p.top5) if p.top5 else None,
                    }
                    for p in predictions.get((sha, wnid), [])
                ],
                "width": img.width if img else None,
                "height": img.height if img else None,
                "crop": crop_box(img.width, img.height, crop_fraction) if img else None,
                **provenance,
                "vote": vote.verdict if vote else None,
                "note": (vote.note or "") if vote else "",
            }
        )
    return items


def _provenance(candidates: list[Candidate], wnid: str) -> dict[str, Any]:
    """Source, author, licence, title and page link of the candidate that brought the image in."""
    for_class = [c for c in candidates if c.wnid == wnid] or candidates
    if not for_class:
        return {"source": None, "author": None, "license": None, "title": None, "query": None, "page_url": None}
    cand = for_class[0]
    return {
        "source": cand.source,
        "author": cand.author,
        "license": cand.license,
        "title": cand.title,
        "query": cand.query,
        "page_url": web_link(cand.page_url),
    }


def crop_box(width: int, height: int, fraction: float = CENTRE_CROP_FRACTION) -> dict[str, float]:
    """The centred square a resize-then-centre-crop keeps, as percentages of width and height."""
    side = fraction * min(width, height)
    w = 100.0 * side / width if width else 100.0
    h = 100.0 * side / height if height else 100.0
    return {
        "width": round(w, 3),
        "height": round(h, 3),
        "left": round((100 - w) / 2, 3),
        "top": round((100 - h) / 2, 3),
    }
