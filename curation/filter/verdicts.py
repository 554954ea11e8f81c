"""One verdict per pair, combining the models' predictions in SQL."""

from __future__ import annotations

import json
from typing import Any

from curation.filter.config import FAILED

VERDICTS_META = "filter:verdicts"  # {"models", "rule", "keep", "through_id": last prediction id judged}


def verdict_config(keys: list[tuple[str, str]], rule: str, keep: str, min_confidence: float | None) -> dict[str, Any]:
    return {"models": sorted(f"{m}@{h}" for m, h in keys), "rule": rule, "keep": keep, "min_confidence": min_confidence}


def update_verdicts(
    catalog: Any,
    wnids: list[str] | None,
    keys: list[tuple[str, str]],
    rule: str,
    keep: str,
    min_confidence: float | None,
) -> dict[str, int]:
    """Combine the models into one verdict per pair, in one INSERT ... SELECT ... ON CONFLICT: for
    the pairs with predictions newer than the last verdict pass, or for every pair when the models,
    rule, keep rule or threshold changed. A model "hits" a pair when it gets it wrong (ImageNet-A) or
    its MSP is at least ``min_confidence`` (ImageNet-O). A pair some model has not scored yet
    (``--limit``) keeps its verdict; one a model failed on loses it. Returns counts kept/discarded/failed
    of the pairs judged now."""
    from sqlalchemy import and_, bindparam, case, delete, func, literal, or_, select

    from curation.catalog import FilterVerdict, Meta, Prediction, utcnow
    from curation.dialect import upsert_from_select

    config = verdict_config(keys, rule, keep, min_confidence)
    keep_label = keep if min_confidence is None else f"{keep[:3]}-msp>={min_confidence:.4g}"
    mine = and_(
        Prediction.rule == rule,
        or_(*[and_(Prediction.model == m, Prediction.weights_hash == h) for m, h in keys]),
        *([Prediction.wnid.in_(wnids)] if wnids is not None else []),
    )
    miss = Prediction.correct.is_(True) if min_confidence is None else Prediction.confidence < min_confidence
    now = utcnow()
    with catalog.session() as session:
        meta = session.get(Meta, VERDICTS_META)
        stored = json.loads(meta.value) if meta is not None else {}
        through = stored.get("through_id", 0) if {k: stored.get(k) for k in config} == config else 0
        last_id = session.scalar(select(func.max(Prediction.id))) or 0
        fresh = select(Prediction.sha256, Prediction.wnid).where(mine, Prediction.id > through).distinct().subquery()
        failed = func.sum(case((Prediction.status == FAILED, 1), else_=0))
        misses = func.sum(case((miss, 1), else_=0))
        kept = (misses == 0) if keep == "all-wrong" else (misses < len(keys))
        judged = (
            select(
                Prediction.sha256,
                Prediction.wnid,
                kept.label("kept"),
                literal(json.dumps([f"{m}@{h}" for m, h in keys])),
                literal(keep_label),
                literal(now),
            )
            .join(fresh, and_(fresh.c.sha256 == Prediction.sha256, fresh.c.wnid == Prediction.wnid))
            .where(mine)
            .group_by(Prediction.sha256, Prediction.wnid)
            .having(func.count() == len(keys))
        )
        counts = {"kept": 0, "discarded": 0, "failed": 0}
        columns = ["sha256", "wnid", "kept", "models", "keep_rule", "updated_at"]
        rows = judged.having(failed == 0)
        upsert_from_select(session, FilterVerdict, columns, rows, ["sha256", "wnid"], columns[2:])
        failing = session.execute(judged.having(failed > 0).with_only_columns(Prediction.sha256, Prediction.wnid)).all()
        counts["failed"] = len(failing)
        if failing:  # by primary key: a correlated delete would visit every verdict
            by_key = (FilterVerdict.sha256 == bindparam("pair_sha"), FilterVerdict.wnid == bindparam("pair_wnid"))
            rows = [{"pair_sha": sha, "pair_wnid": wnid} for sha, wnid in failing]
            session.execute(delete(FilterVerdict.__table__).where(*by_key), rows)
        written = judged.having(failed == 0).subquery()
        for is_kept, n in session.execute(select(written.c.kept, func.count()).group_by(written.c.kept)):
            counts["kept" if is_kept else "discarded"] += n
        session.merge(Meta(key=VERDICTS_META, value=json.dumps({**config, "through_id": last_id})))
    return counts
