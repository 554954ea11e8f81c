"""Which (image, class) pairs a release holds, with their provenance from the catalog."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from curation import catalog as cat


@dataclass
class Item:
    """One (image, class) pair of the release with everything the manifest says about it."""

    sha256: str
    wnid: str
    class_name: str
    path: str  # of the original, relative to the data directory
    format: str
    width: int
    height: int
    source: str = ""
    image_url: str = ""
    page_url: str = ""
    title: str = ""
    author: str = ""
    license: str = ""
    crawled_at: datetime | None = None
    filter_model: str = ""
    filter_rule: str = ""
    filter_prediction: str = ""
    filter_prediction_name: str = ""
    filter_confidence: float | None = None
    keep_rule: str = ""
    votes: Counter = field(default_factory=Counter)
    folder: str = ""  # the release label when it is not the crawled class (ImageNet-O: the predicted target)
    folder_name: str = ""

    @property
    def label(self) -> str:
        """The wnid the release files the image under."""
        return self.folder or self.wnid

    @property
    def file(self) -> str:
        return f"{self.label}/{self.sha256}.jpg"


@dataclass
class Selection:
    """The chosen items plus how many pairs were left out, by reason."""

    items: list[Item]
    dropped: Counter


def select_items(session: Session, votes_needed: int, min_per_class: int, max_per_class: int | None) -> Selection:
    """The release's (image, class) pairs with their provenance; deterministic for a given catalog.

    Above ``max_per_class`` a class keeps its images with the smallest sha256 (a fixed pseudo-random
    choice); classes below ``min_per_class`` are left out whole.
    """
    from sqlalchemy import func

    dropped: Counter = Counter()
    reviewable = (
        select(cat.FilterVerdict, cat.DedupStatus.label_conflict, cat.Image)
        .join(cat.DedupStatus, cat.DedupStatus.sha256 == cat.FilterVerdict.sha256)
        .join(cat.Image, cat.Image.sha256 == cat.FilterVerdict.sha256)
        .where(cat.FilterVerdict.kept.is_(True), cat.DedupStatus.status == cat.REPRESENTATIVE)
    )
    total = session.scalar(select(func.count()).select_from(reviewable.subquery())) or 0
    accepted = cat.accepted_query(votes_needed).subquery()
    rows = session.execute(
        reviewable.join(
            accepted, (accepted.c.sha256 == cat.FilterVerdict.sha256) & (accepted.c.wnid == cat.FilterVerdict.wnid)
        ).order_by(cat.FilterVerdict.wnid, cat.FilterVerdict.sha256)
    ).all()
    dropped["not accepted"] += total - len(rows)
    names = dict(session.execute(select(cat.ImageClass.wnid, cat.ImageClass.name)).all())
    chosen: list[tuple[cat.FilterVerdict, cat.Image]] = []
    for verdict, label_conflict, image in rows:
        if label_conflict:
            dropped["label conflict"] += 1
        else:
            chosen.append((verdict, image))
    classes_of = Counter(verdict.sha256 for verdict, _ in chosen)
    single = [(v, im) for v, im in chosen if classes_of[v.sha256] == 1]
    dropped["accepted for several classes"] += len(chosen) - len(single)
    folders = release_folders(session, [(v.sha256, v.wnid) for v, _ in single])
    by_class: dict[str, list[tuple[cat.FilterVerdict, cat.Image]]] = defaultdict(list)
    for verdict, image in single:
        folder = verdict.wnid if folders is None else folders.get((verdict.sha256, verdict.wnid))
        if folder is None:
            dropped["no filter prediction"] += 1
            continue
        by_class[folder].append((verdict, image))
    items: list[Item] = []
    for folder in sorted(by_class):
        pairs = sorted(by_class[folder], key=lambda pair: pair[0].sha256)
        if len(pairs) < min_per_class:
            dropped[f"class below --min-per-class {min_per_class}"] += len(pairs)
            continue
        if max_per_class is not None and len(pairs) > max_per_class:
            dropped[f"above --max-per-class {max_per_class}"] += len(pairs) - max_per_class
            pairs = pairs[:max_per_class]
        for verdict, image in pairs:
            items.append(
                Item(
                    sha256=image.sha256,
                    wnid=verdict.wnid,
                    class_name=names.get(verdict.wnid, verdict.wnid),
                    folder="" if folder == verdict.wnid else folder,
                    folder_name="" if folder == verdict.wnid else names.get(folder, folder),
                    path=image.path,
                    format=image.format,
                    width=image.width,
                    height=image.height,
                    keep_rule=verdict.keep_rule,
                    filter_model=_first_model(verdict.models),
                )
            )
    attach_provenance(session, items, names)
    return Selection(items=items, dropped=Counter({k: v for k, v in dropped.items() if v}))


def release_folders(session: Session, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], str] | None:
    """(sha256, wnid) -> release folder, for kinds that file images under the model's prediction
    (ImageNet-O: the predicted target); None for kinds that use the crawled class."""
    from curation.kinds import catalog_kind

    if catalog_kind(session).release_folder != "prediction":
        return None
    from curation.kinds.by_target import predicted_targets

    return predicted_targets(session, pairs)


def _first_model(models_json: str) -> str:
    try:
        models = json.loads(models_json)
    except (TypeError, ValueError):
        return ""
    return str(models[0]) if isinstance(models, list) and models else ""


# Images whose candidates, predictions and votes are read per query (indexed IN look-ups).
PROVENANCE_BATCH = 500


def attach_provenance(session: Session, items: list[Item], names: dict[str, str]) -> None:
    """Fill each item's source, licence, filter prediction and votes from the catalog: indexed
    look-ups of the items' images only, memory proportional to the items."""
    from curation.synsets import wordnet_lemmas

    lemmas = wordnet_lemmas()
    for start in range(0, len(items), PROVENANCE_BATCH):
        part = items[start : start + PROVENANCE_BATCH]
        shas = sorted({i.sha256 for i in part})
        candidates, any_class = _first_candidates(session, shas)
        predictions = _predictions_by_model(session, shas)
        votes = _votes(session, shas)
        for item in part:
            cand = candidates.get((item.sha256, item.wnid)) or any_class.get(item.sha256)
            if cand is not None:
                item.source = cand.source
                item.image_url = cand.url or ""
                item.page_url = cand.page_url or ""
                item.title = cand.title or ""
                item.author = cand.author or ""
                item.license = cand.license or ""
                item.crawled_at = cand.created_at
            by_model = predictions.get((item.sha256, item.wnid), {})
            if item.filter_model not in by_model and by_model:
                item.filter_model = min(by_model)
            pred = by_model.get(item.filter_model)
            if pred is not None:
                item.filter_rule = pred.rule
                item.filter_prediction = pred.pred_wnid or ""
                item.filter_prediction_name = (
                    names.get(pred.pred_wnid or "") or lemmas.get(pred.pred_wnid or "", "").split(",")[0]
                )
                item.filter_confidence = pred.confidence
            item.votes = votes.get((item.sha256, item.wnid), Counter())


def _first_candidates(session: Session, shas: list[str]) -> tuple[dict, dict]:
    """The first downloaded candidate of each (image, class) and of each image."""
    columns = (cat.Candidate.image_sha256, cat.Candidate.wnid, cat.Candidate.source, cat.Candidate.url)
    columns += (cat.Candidate.page_url, cat.Candidate.title, cat.Candidate.author, cat.Candidate.license)
    candidates: dict[tuple[str, str], Any] = {}
    any_class: dict[str, Any] = {}
    for cand in session.execute(
        select(*columns, cat.Candidate.created_at)
        .where(cat.Candidate.image_sha256.in_(shas), cat.Candidate.status == cat.DOWNLOADED)
        .order_by(cat.Candidate.id)
    ):
        candidates.setdefault((cand.image_sha256, cand.wnid), cand)
        any_class.setdefault(cand.image_sha256, cand)
    return candidates, any_class


def _predictions_by_model(session: Session, shas: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """(sha256, wnid) -> "model@weights" -> its successful prediction."""
    p = cat.Prediction
    predictions: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for pred in session.execute(
        select(p.sha256, p.wnid, p.model, p.weights_hash, p.rule, p.pred_wnid, p.confidence)
        .where(p.sha256.in_(shas), p.status == "ok")
        .order_by(p.rule.desc(), p.id)
    ):  # "top1" before "restricted", so the restricted rule wins when a model ran both
        predictions[(pred.sha256, pred.wnid)][f"{pred.model}@{pred.weights_hash}"] = pred
    return predictions


def _votes(session: Session, shas: list[str]) -> dict[tuple[str, str], Counter]:
    """(sha256, wnid) -> verdict counts, skips left out."""
    from sqlalchemy import func

    a = cat.Annotation
    votes: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for sha, wnid, verdict, n in session.execute(
        select(a.sha256, a.wnid, a.verdict, func.count())
        .where(a.sha256.in_(shas), a.verdict != "skip")
        .group_by(a.sha256, a.wnid, a.verdict)
    ):
        votes[(sha, wnid)][verdict] = n
    return votes
