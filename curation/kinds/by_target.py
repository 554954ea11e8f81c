"""ImageNet-O bookkeeping by target: a kept (image, source class) pair belongs to the 1k target its
filter prediction names (the release folder); `status`, `report` and `release` group by it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from curation import catalog as cat

TARGET_COLUMNS = ("kept", "unique", "accepted", "released")


# Images per lookup: bounds the IN list (and memory) whatever the number of pairs asked for.
LOOKUP_IMAGES = 500


def predicted_targets(session: Session, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """(sha256, source wnid) -> the target predicted by the first model of the pair's filter verdict,
    for ``pairs`` only: verdicts and predictions are read by image, a block of images at a time."""
    wanted = set(pairs)
    images = sorted({sha for sha, _ in wanted})
    targets: dict[tuple[str, str], str] = {}
    for start in range(0, len(images), LOOKUP_IMAGES):
        block = images[start : start + LOOKUP_IMAGES]
        first_model = {}
        for sha, wnid, models in session.execute(
            select(cat.FilterVerdict.sha256, cat.FilterVerdict.wnid, cat.FilterVerdict.models).where(
                cat.FilterVerdict.sha256.in_(block)
            )
        ):
            names = json.loads(models or "[]")
            first_model[(sha, wnid)] = names[0] if names else ""
        rows = session.execute(
            select(cat.Prediction.sha256, cat.Prediction.wnid, cat.Prediction.model, cat.Prediction.weights_hash)
            .add_columns(cat.Prediction.pred_wnid)
            .where(cat.Prediction.sha256.in_(block), cat.Prediction.rule == "msp", cat.Prediction.status == "ok")
        )
        for sha, wnid, model, weights_hash, pred in rows:
            pair = (sha, wnid)
            if pair in wanted and first_model.get(pair) == f"{model}@{weights_hash}" and pred:
                targets[pair] = pred
    return targets


def funnel_by_target(session: Session, targets: list[tuple[str, str]], votes_needed: int) -> dict[str, Any]:
    """The ImageNet-O funnel: crawl totals over the source classes, then kept, unique, accepted and
    released pairs per target folder (one row per target, in wnid order)."""
    target_wnids = {wnid for wnid, _ in targets}
    sources = session.scalar(
        select(func.count()).select_from(cat.ImageClass).where(cat.ImageClass.wnid.not_in(target_wnids))
    )
    crawl = dict(session.execute(select(cat.Candidate.status, func.count()).group_by(cat.Candidate.status)).all())
    kept = set(
        session.execute(
            select(cat.FilterVerdict.sha256, cat.FilterVerdict.wnid).where(cat.FilterVerdict.kept.is_(True))
        ).all()
    )
    unique_shas = set(
        session.scalars(select(cat.DedupStatus.sha256).where(cat.DedupStatus.status == cat.REPRESENTATIVE))
    )
    accepted = cat.accepted_pairs(session, votes_needed)
    latest = session.scalar(select(func.max(cat.Release.id)))
    released = (
        set()
        if latest is None
        else set(
            session.execute(
                select(cat.ReleaseItem.sha256, cat.ReleaseItem.wnid).where(cat.ReleaseItem.release_id == latest)
            ).all()
        )
    )
    target_of = predicted_targets(session, kept)
    counts = {wnid: dict.fromkeys(TARGET_COLUMNS, 0) for wnid, _ in targets}
    for pair in kept:
        row = counts.get(target_of.get(pair, ""))
        if row is None:
            continue
        row["kept"] += 1
        row["unique"] += pair[0] in unique_shas
        row["accepted"] += pair in accepted
        row["released"] += pair in released
    return {
        "sources": {
            "classes": sources,
            "candidates": sum(crawl.values()),
            "downloaded": crawl.get(cat.DOWNLOADED, 0),
            "failed": crawl.get(cat.FAILED, 0),
        },
        "targets": [{"wnid": wnid, "name": name, **counts[wnid]} for wnid, name in targets],
    }
