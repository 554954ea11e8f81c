"""Which downloaded (image, class) pairs a run scores: indexed anti-joins over the pair index, a page at a time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from curation.errors import CurationError
from curation.store.reader import ImageReader, ImageRef


@dataclass
class Pair:
    """One (image, class) pair to judge."""

    sha256: str
    wnid: str
    path: ImageRef


def class_set(session: Any, classes_arg: str | None) -> list[str]:
    from sqlalchemy import select

    from curation.catalog import ImageClass

    known = list(session.scalars(select(ImageClass.wnid).order_by(ImageClass.wnid)))
    if not classes_arg:
        return known
    wanted = sorted({w.strip() for w in classes_arg.split(",") if w.strip()})
    missing = [w for w in wanted if w not in set(known)]
    if missing:
        raise CurationError(f"class {missing[0]} is not in the catalog (add it with `curation classes add`)")
    return wanted


# Below this many images a local run decodes in its own process instead of starting decode workers:

# Pairs read and scored per page: bounds the driver's memory (~0.3 KB a pair) whatever the catalog's size.
PAGE_PAIRS = 50_000


def label_space(session: Any, kind: Any, classes_arg: str | None) -> tuple[list[str], list[str]]:
    """(label wnids the model is judged over, source wnids whose downloads are scored). ImageNet-A:
    both are the run's classes; ImageNet-O: the kind's 200 targets and the other catalog classes."""
    wnids = class_set(session, classes_arg)
    if not kind.ood:
        return wnids, wnids
    from curation.synsets import read_recipe

    targets = sorted(row["wnid"] for row in read_recipe(kind.recipe))
    return targets, [w for w in wnids if w not in set(targets)]


def scored_by(key: tuple[str, str], rule: str) -> Any:
    """EXISTS: the candidate's (image, class) pair has a prediction of this model, weights and rule."""
    from sqlalchemy import exists

    from curation.catalog import Candidate, Prediction

    model, weights_hash = key
    return exists().where(
        Prediction.sha256 == Candidate.image_sha256,
        Prediction.wnid == Candidate.wnid,
        Prediction.model == model,
        Prediction.weights_hash == weights_hash,
        Prediction.rule == rule,
    )


def downloaded_pairs(columns: list[Any], wnids: list[str] | None, since: int | None = None) -> Any:
    """SELECT ``columns`` over the distinct downloaded (image, class) pairs, in (sha256, wnid) order:
    GROUP BY walks ix_candidates_image_wnid_status and a LIMIT stops it early. The status test is
    written ``status || '' = ?`` so that no index serves it: SQLite, without statistics, otherwise
    picked ix_candidates_status and sorted every downloaded row in a temp B-tree (6 s for a page of 100
    at 300,000 downloads; 16 ms on the pair index). ``wnids`` None means every class. ``since``: only the
    pairs of candidates downloaded after that value of the downloads sequence (curation/counters.py),
    found by their ids on ix_candidates_download_seq, so the query costs what is new."""
    from sqlalchemy import select
    from sqlalchemy.orm import aliased

    from curation.catalog import DOWNLOADED, Candidate

    stmt = select(*columns).where(Candidate.status.concat("") == DOWNLOADED, Candidate.image_sha256.is_not(None))
    if wnids is not None:
        stmt = stmt.where(Candidate.wnid.in_(wnids))
    if since is not None:
        fresh = aliased(Candidate)
        stmt = stmt.where(Candidate.id.in_(select(fresh.id).where(fresh.download_seq > since)))
    return stmt.group_by(Candidate.image_sha256, Candidate.wnid).order_by(Candidate.image_sha256, Candidate.wnid)


def pending_page(
    session: Any,
    wnids: list[str] | None,
    keys: list[tuple[str, str]],
    rule: str,
    images: ImageReader,
    limit: int,
    after: tuple[str, str] | None,
    since: int | None = None,
) -> list[tuple[Pair, list[bool]]]:
    """The next ``limit`` pairs after ``after`` that some model has not scored (among the candidates
    downloaded after ``since``, when given), each with whether each model has: an indexed anti-join
    per model, never the whole table."""
    from sqlalchemy import and_, func, or_

    from curation.catalog import Candidate, Image

    scored = [scored_by(key, rule) for key in keys]
    stmt = downloaded_pairs([Candidate.image_sha256, Candidate.wnid, func.min(Image.path), *scored], wnids, since)
    stmt = stmt.join(Image, Image.sha256 == Candidate.image_sha256).where(or_(*[~s for s in scored]))
    if after is not None:
        sha, wnid = after
        stmt = stmt.where(or_(Candidate.image_sha256 > sha, and_(Candidate.image_sha256 == sha, Candidate.wnid > wnid)))
    rows = session.execute(stmt.limit(limit)).all()
    return [(Pair(sha, wnid, images.ref(path)), [bool(v) for v in done]) for sha, wnid, path, *done in rows]


def count_pairs(
    session: Any, wnids: list[str] | None, keys: list[tuple[str, str]], rule: str, since: int | None = None
) -> tuple[int, int]:
    """(downloaded pairs, pairs some model has not scored among them), in one walk of the pair index, or
    of the candidates downloaded after ``since``."""
    from sqlalchemy import case, func, or_, select

    pending = case((or_(*[~scored_by(key, rule) for key in keys]), 1), else_=0)
    pairs = downloaded_pairs([pending.label("pending")], wnids, since).order_by(None).subquery()
    total, n_pending = session.execute(select(func.count(), func.coalesce(func.sum(pairs.c.pending), 0))).one()
    return int(total), int(n_pending)
