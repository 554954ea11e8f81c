"""What earlier runs recorded in catalog_meta: the class set and threshold their predictions hold for
(a new run undoes what a change invalidated), and the point of the downloads sequence up to which every
pair is scored (a new run then reads only what was downloaded since)."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from curation.filter.judging import MSP_RECHECK_BAND, log_odds
from curation.filter.verdicts import VERDICTS_META


def _class_set_record(model: str, weights_hash: str, rule: str, wnids: list[str]) -> tuple[str, dict[str, Any]]:
    """The catalog_meta key and value that remember the class set of a model's restricted run."""
    key = "filter:" + hashlib.sha256(f"{model}@{weights_hash}:{rule}".encode()).hexdigest()[:16]
    class_set = hashlib.sha256(",".join(sorted(wnids)).encode()).hexdigest()[:16]
    return key, {"model": model, "weights_hash": weights_hash, "class_set": class_set, "classes": len(wnids)}


def _threshold_record(model: str, weights_hash: str, threshold: float) -> tuple[str, dict[str, Any]]:
    """The catalog_meta key and value that remember the MSP threshold of a model's last run."""
    key = "filter-msp:" + hashlib.sha256(f"{model}@{weights_hash}".encode()).hexdigest()[:16]
    return key, {"model": model, "weights_hash": weights_hash, "min_confidence": threshold}


def unchanged_since_last_run(
    session: Any, keys: list[tuple[str, str]], rule: str, wnids: list[str], threshold: float | None
) -> bool:
    """Whether every model's last run recorded this run's class set (restricted rule) and MSP threshold,
    so that neither :func:`forget_other_class_sets` nor :func:`forget_near_new_threshold` would undo
    anything. A model with no record is not unchanged: its first run writes one."""
    from curation.catalog import Meta

    records = []
    for model, weights_hash in keys:
        if rule == "restricted":
            records.append((_class_set_record(model, weights_hash, rule, wnids), "class_set"))
        if threshold is not None:
            records.append((_threshold_record(model, weights_hash, threshold), "min_confidence"))
    for (key, value), field in records:
        meta = session.get(Meta, key)
        if meta is None or json.loads(meta.value)[field] != value[field]:
            return False
    return True


def forget_other_class_sets(session: Any, model: str, weights_hash: str, rule: str, wnids: list[str]) -> None:
    """A restricted prediction depends on the class set: when it changed since this model's last
    restricted run, drop that model's predictions (and the verdicts built on them) to rescore them."""
    from sqlalchemy import delete, func, select

    from curation.catalog import FilterVerdict, Meta, Prediction

    if rule != "restricted":
        return
    key, value = _class_set_record(model, weights_hash, rule, wnids)
    meta = session.get(Meta, key)
    if meta is not None and json.loads(meta.value)["class_set"] != value["class_set"]:
        scored = Prediction.model == model, Prediction.weights_hash == weights_hash, Prediction.rule == rule
        n_pairs = session.scalar(select(func.count()).select_from(Prediction).where(*scored))
        print(
            f"filter: the class set changed since {model}'s last restricted run: rescoring {n_pairs} pair(s)",
            file=sys.stderr,
        )
        session.execute(delete(FilterVerdict).where(FilterVerdict.sha256.in_(select(Prediction.sha256).where(*scored))))
        session.execute(delete(Prediction).where(*scored))
        # Deleted ids may be handed out again: the next verdict pass reads every prediction.
        session.execute(delete(Meta).where(Meta.key == VERDICTS_META))
        forget_scored_through(session)
    session.merge(Meta(key=key, value=json.dumps(value)))


def forget_near_new_threshold(session: Any, model: str, weights_hash: str, threshold: float) -> None:
    """Approximate MSPs were re-checked only near the threshold of their run: when T changed since this
    model's last run, drop its predictions whose MSP lies within the band of the new T (they are rescored,
    re-checked against the new T); the others cannot flip."""
    import math

    from sqlalchemy import delete

    from curation.catalog import Meta, Prediction

    key, value = _threshold_record(model, weights_hash, threshold)
    meta = session.get(Meta, key)
    if meta is not None and json.loads(meta.value)["min_confidence"] != threshold:
        low, high = (1 / (1 + math.exp(-(log_odds(threshold) + s * MSP_RECHECK_BAND))) for s in (-1, 1))
        gone = session.execute(
            delete(Prediction).where(
                Prediction.model == model,
                Prediction.weights_hash == weights_hash,
                Prediction.rule == "msp",
                Prediction.confidence.between(low, high),
            )
        ).rowcount
        print(f"filter: --min-confidence changed: rescoring {gone} pair(s) near the new threshold", file=sys.stderr)
        forget_scored_through(session)
    session.merge(Meta(key=key, value=json.dumps(value)))


SCORED_THROUGH_KEY = "filter-through:"  # + sha256(models, rule, label space, scored classes)


def _scored_through_key(keys: list[tuple[str, str]], rule: str, wnids: list[str], in_set: list[str] | None) -> str:
    config = json.dumps([sorted(keys), rule, sorted(wnids), sorted(in_set) if in_set is not None else None])
    return SCORED_THROUGH_KEY + hashlib.sha256(config.encode()).hexdigest()[:40]


def scored_through(
    session: Any, keys: list[tuple[str, str]], rule: str, wnids: list[str], in_set: list[str] | None
) -> tuple[int, int] | None:
    """(downloads sequence value, downloaded pairs then): every pair downloaded up to that value was
    scored by these models under this rule and class set; None without such a record."""
    from curation.catalog import Meta

    meta = session.get(Meta, _scored_through_key(keys, rule, wnids, in_set))
    if meta is None:
        return None
    value = json.loads(meta.value)
    return value["downloads"], value["pairs"]


def record_scored_through(
    session: Any, keys: list[tuple[str, str]], rule: str, classes: tuple[list[str], list[str] | None], upto: tuple
) -> None:
    """Remember that every pair downloaded up to ``upto`` = (sequence value, pairs) is scored."""
    from curation.catalog import Meta

    downloads, pairs = upto
    key = _scored_through_key(keys, rule, *classes)
    session.merge(Meta(key=key, value=json.dumps({"downloads": downloads, "pairs": pairs})))


def forget_scored_through(session: Any) -> None:
    """Predictions were deleted: no record of what is scored holds any more."""
    from sqlalchemy import delete

    from curation.catalog import Meta

    session.execute(delete(Meta).where(Meta.key.startswith(SCORED_THROUGH_KEY)))
