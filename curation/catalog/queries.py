"""Reading the catalog across stages: the accepted pairs, the per-class funnel, and table exports that
stream in pages."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    exists,
    func,
    inspect,
    or_,
    select,
)
from sqlalchemy.orm import Session

from curation.catalog.engine import Catalog
from curation.catalog.models import (
    DOWNLOADED,
    FAILED,
    REPRESENTATIVE,
    TABLES,
    Annotation,
    Candidate,
    DedupStatus,
    FilterVerdict,
    ImageClass,
    Meta,
    Release,
    ReleaseItem,
    ReviewQueue,
)
from curation.errors import CurationError

# catalog_meta: the consensus rule the review server adopted ("fixed:N" or "dynamic:...").
CONSENSUS_RULE_KEY = "annotate:consensus-rule"
# Annotators that are not people: `curation annotate auto-accept` (a scripted demo) votes as this name.
AUTO_ACCEPT_ANNOTATOR = "auto-accept_not-a-human-review"
AUTOMATIC_ANNOTATORS = (AUTO_ACCEPT_ANNOTATOR,)
# catalog_meta: set by `annotate auto-accept --count-for-release` (a demo): automatic accepts then enter
# a release under the fixed rule; without it every accepted pair needs a human accept.
AUTOMATIC_RELEASE_KEY = "annotate:automatic-accepts-release"

# --------------------------------------------------------------------------- reading helpers


def accepted_query(votes_needed: int = 1) -> Any:
    """SELECT (sha256, wnid) of the pairs accepted by annotation. Under the fixed rule: at least a
    majority of ``votes_needed`` accepts and more accepts than other verdicts (skips do not count), by
    people: automatic votes count only in a catalog a demo marked ``AUTOMATIC_RELEASE_KEY``. Once a
    review server adopted dynamic consensus (``CONSENSUS_RULE_KEY``): the pairs it closed as accepted
    (``review_queue.outcome``; it closes none without a human accept), whatever the majority. One GROUP BY with HAVING over the (sha256, wnid, annotator) index: usable as a subquery."""
    from sqlalchemy import case

    accepts = func.sum(case((Annotation.verdict == "accept", 1), else_=0))
    dynamic = exists().where(Meta.key == CONSENSUS_RULE_KEY, Meta.value.like("dynamic%"))
    closed_accept = exists().where(
        ReviewQueue.sha256 == Annotation.sha256, ReviewQueue.wnid == Annotation.wnid, ReviewQueue.outcome == "accept"
    )
    person = Annotation.annotator.notin_(AUTOMATIC_ANNOTATORS)
    by_people = func.sum(case((and_(Annotation.verdict == "accept", person), 1), else_=0))
    people = func.sum(case((person, 1), else_=0))
    automatic_counts = exists().where(Meta.key == AUTOMATIC_RELEASE_KEY)

    def majority(yes: Any, votes: Any) -> Any:
        return and_(yes >= votes_needed // 2 + 1, 2 * yes > votes)

    fixed = or_(
        and_(automatic_counts, majority(accepts, func.count())), and_(~automatic_counts, majority(by_people, people))
    )
    return (
        select(Annotation.sha256, Annotation.wnid)
        .where(Annotation.verdict != "skip")
        .group_by(Annotation.sha256, Annotation.wnid)
        .having(or_(and_(~dynamic, fixed), and_(dynamic, closed_accept)))
    )


def accepted_pairs(session: Session, votes_needed: int = 1) -> set[tuple[str, str]]:
    """(sha256, wnid) pairs accepted by annotation (see :func:`accepted_query`)."""
    return {(sha, wnid) for sha, wnid in session.execute(accepted_query(votes_needed))}


def funnel(session: Session, votes_needed: int = 1) -> list[dict[str, Any]]:
    """Per-class counts through the pipeline, one dict per class, in wnid order."""
    classes = session.execute(select(ImageClass.wnid, ImageClass.name).order_by(ImageClass.wnid)).all()
    counts: dict[str, dict[str, int]] = {
        wnid: {"candidates": 0, "downloaded": 0, "failed": 0, "kept": 0, "unique": 0, "accepted": 0, "released": 0}
        for wnid, _ in classes
    }

    def add(column: str, rows: Any) -> None:
        for wnid, n in rows:
            if wnid in counts:
                counts[wnid][column] += n

    add("candidates", session.execute(select(Candidate.wnid, func.count()).group_by(Candidate.wnid)))
    for status, column in ((DOWNLOADED, "downloaded"), (FAILED, "failed")):
        add(
            column,
            session.execute(
                select(Candidate.wnid, func.count()).where(Candidate.status == status).group_by(Candidate.wnid)
            ),
        )
    add(
        "kept",
        session.execute(
            select(FilterVerdict.wnid, func.count()).where(FilterVerdict.kept.is_(True)).group_by(FilterVerdict.wnid)
        ),
    )
    add(
        "unique",
        session.execute(
            select(FilterVerdict.wnid, func.count())
            .join(DedupStatus, DedupStatus.sha256 == FilterVerdict.sha256)
            .where(FilterVerdict.kept.is_(True), DedupStatus.status == REPRESENTATIVE)
            .group_by(FilterVerdict.wnid)
        ),
    )
    accepted = accepted_query(votes_needed).subquery()
    add("accepted", session.execute(select(accepted.c.wnid, func.count()).group_by(accepted.c.wnid)))
    latest = session.scalar(select(func.max(Release.id)))
    if latest is not None:
        add(
            "released",
            session.execute(
                select(ReleaseItem.wnid, func.count())
                .where(ReleaseItem.release_id == latest)
                .group_by(ReleaseItem.wnid)
            ),
        )
    return [{"wnid": wnid, "name": name, **counts[wnid]} for wnid, name in classes]


# --------------------------------------------------------------------------- export


def table_names() -> list[str]:
    """Names of every catalog table, in schema order."""
    return list(TABLES)


EXPORT_PAGE = 1000  # rows per fetch from the cursor while exporting


def export_table(catalog: Catalog, table: str, fmt: str, out: io.TextIOBase) -> int:
    """Write every row of ``table`` to ``out`` as CSV or JSON lines; returns the row count.

    Rows stream from a server-side cursor in pages of ``EXPORT_PAGE``: memory holds a page, not the table."""
    if table not in TABLES:
        raise CurationError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    model = TABLES[table]
    columns = [c.key for c in inspect(model).columns]
    query = select(*[getattr(model, c) for c in columns]).execution_options(yield_per=EXPORT_PAGE)
    if model is Meta:
        query = query.where(Meta.key.not_like("%secret"))
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(columns)
    n = 0
    with catalog.session() as session:
        for row in session.execute(query):
            values = [v.isoformat() if isinstance(v, datetime) else v for v in row]
            if writer is not None:
                writer.writerow(["" if v is None else v for v in values])
            else:
                out.write(json.dumps(dict(zip(columns, values, strict=True)), ensure_ascii=False) + "\n")
            n += 1
    return n
