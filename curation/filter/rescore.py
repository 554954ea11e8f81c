"""`curation filter --rescore`: fill the own-class probability and rank (``class_prob``, ``class_rank``)
of predictions written before the filter stored them, by scoring their images again with the same
models. Decisions are never touched; a page of rows at a time, committed as it goes, so a killed run
keeps what it filled and a rerun does the rest.
"""

from __future__ import annotations

import sys
from typing import Any

from curation.filter.judging import own_class_scores

MISSING_META = "filter:class-prob-missing"  # rows that lack them, counted by migration 0013
RESCORE_PAGE = 4096  # predictions per page: one input pipeline, one committed UPDATE


def missing_hint(catalog: Any) -> None:
    """One line on stderr while older predictions lack the own-class probability (O(1): a meta row)."""
    from curation.catalog import Meta

    with catalog.session() as session:
        meta = session.get(Meta, MISSING_META)
    if meta is not None:
        print(
            f"filter: {meta.value} older prediction(s) lack the probability of their own class (review order "
            "needs it): `curation filter --rescore` fills them",
            file=sys.stderr,
        )


def _page(session: Any, loaded: Any, rule: str, after: int) -> list[tuple[int, str, str, str]]:
    """(id, sha256, wnid, image path) of the next predictions of ``loaded`` lacking class_prob."""
    from sqlalchemy import select

    from curation.catalog import Image, Prediction

    stmt = (
        select(Prediction.id, Prediction.sha256, Prediction.wnid, Image.path)
        .join(Image, Image.sha256 == Prediction.sha256)
        .where(
            Prediction.id > after,
            Prediction.model == loaded.name,
            Prediction.weights_hash == loaded.weights_hash,
            Prediction.rule == rule,
            Prediction.status == "ok",
            Prediction.class_prob.is_(None),
        )
        .order_by(Prediction.id)
        .limit(RESCORE_PAGE)
    )
    return [tuple(row) for row in session.execute(stmt)]


def _fill(catalog: Any, loaded: Any, columns: list[int] | None, rows: list[tuple], pipeline: dict) -> int:
    """Score the images of ``rows`` once and write each row's own-class probability and rank."""
    from sqlalchemy import bindparam, update

    from curation.catalog import Prediction
    from curation.inference import iter_logits

    images = list(dict.fromkeys(sha for _, sha, _, _ in rows))
    position = {sha: k for k, sha in enumerate(images)}
    paths = {sha: catalog_path for _, sha, _, catalog_path in rows}
    reader = pipeline.pop("images")
    logits = None
    for part in iter_logits(loaded, [reader.ref(paths[sha]) for sha in images], chunk_size=len(images), **pipeline):
        logits = part.logits if logits is None else logits  # one chunk: chunk_size covers every image
    index_of = {wnid: i for i, wnid in enumerate(loaded.label_wnids)}
    targets = [index_of.get(wnid, -1) for _, _, wnid, _ in rows]
    scores = own_class_scores(logits, columns, [position[sha] for _, sha, _, _ in rows], targets)
    values = [
        {"row_id": row[0], "p": p, "rank": rank}
        for row, (p, rank) in zip(rows, scores, strict=True)
        if p is not None and p == p  # NaN: the image no longer reads; the row stays as it is
    ]
    if values:
        stmt = update(Prediction.__table__).where(Prediction.id == bindparam("row_id"))
        with catalog.session() as session:
            session.execute(stmt.values(class_prob=bindparam("p"), class_rank=bindparam("rank")), values)
    return len(values)


def rescore(scorer: Any) -> int:
    """Fill class_prob and class_rank for every prediction of the run's models that lacks them; prints
    one summary line; drops the migration's count once none is left."""
    from sqlalchemy import delete, func, select

    from curation.catalog import Meta, Prediction

    plan = scorer.plan
    if plan.rule == "msp":
        print("filter --rescore: nothing to fill: ImageNet-O source classes have no probability under the rule")
        return 0
    restricted = plan.rule == "restricted"
    filled = 0
    for loaded, columns in scorer.models:
        after = 0
        while True:
            with plan.catalog.session() as session:
                rows = _page(session, loaded, plan.rule, after)
            if not rows:
                break
            pipeline = {**scorer.pipeline, "images": plan.images}
            filled += _fill(plan.catalog, loaded, columns if restricted else None, rows, pipeline)
            after = rows[-1][0]
    with plan.catalog.session() as session:
        left = session.scalar(
            select(func.count())
            .select_from(Prediction)
            .where(
                Prediction.status == "ok", Prediction.rule.in_(("restricted", "top1")), Prediction.class_prob.is_(None)
            )
        )
        if not left:
            session.execute(delete(Meta).where(Meta.key == MISSING_META))
        else:
            session.merge(Meta(key=MISSING_META, value=str(left)))
    print(f"filter --rescore: filled the own-class probability of {filled} prediction(s); {left} still lack it")
    return 0
