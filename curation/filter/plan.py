"""What a filter run is about, resolved from the settings and the catalog alone (no torch): the rule,
the label space, the classes scored, and whether anything is left to do at all."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation import counters
from curation.filter.config import FilterOptions, rule_and_threshold
from curation.filter.pending import count_pairs, label_space
from curation.filter.scoring import Scored
from curation.filter.state import record_scored_through, scored_through, unchanged_since_last_run
from curation.filter.verdicts import update_verdicts
from curation.filter.weights import known_weights_hash
from curation.store.reader import ImageReader, open_reader

MIN_CONFIDENCE_META = "filter:min_confidence"  # the release's datasheet reads the threshold in force


@dataclass(frozen=True)
class Pending:
    """What a run found to do: (downloaded pairs, pending pairs), the downloads sequence value its
    pending pairs were read after (None: all of them) and the value when it looked."""

    pairs: tuple[int, int]
    since: int | None
    downloads: int


@dataclass
class Plan:
    """A run's settings resolved against the catalog, before any model is loaded."""

    catalog: Any
    opts: FilterOptions
    rule: str
    min_confidence: float | None
    wnids: list[str]  # the label space the argmax is over
    in_set: list[str] | None  # the classes whose downloads are scored; None: every class
    data_dir: Path
    images: ImageReader  # the image store the images are read from

    @property
    def where(self) -> tuple[list[str] | None, str, ImageReader]:
        return self.in_set, self.rule, self.images

    def pending(self, session: Any, keys: list[tuple[str, str]]) -> Pending:
        """Count the pairs and the pending pairs: from the record of what is scored, only the candidates
        downloaded since (an index range); without one, a walk of every downloaded pair."""
        downloads = counters.current(session, counters.DOWNLOADS)
        record = scored_through(session, keys, self.rule, self.wnids, self.in_set)
        if record is None:
            return Pending(count_pairs(session, self.in_set, keys, self.rule), None, downloads)
        since, scored = record
        _, n_pending = count_pairs(session, self.in_set, keys, self.rule, since)
        return Pending((scored + n_pending, n_pending), since, downloads)

    def all_scored(self, session: Any, keys: list[tuple[str, str]], pending: Pending) -> None:
        """Record that every pair counted by ``pending`` is scored now."""
        if pending.pairs[1] or pending.since != pending.downloads:
            upto = (pending.downloads, pending.pairs[0])
            record_scored_through(session, keys, self.rule, (self.wnids, self.in_set), upto)

    def verdicts(self, keys: list[tuple[str, str]]) -> dict[str, int]:
        """Combine the models' predictions into verdicts for the pairs scored since the last pass."""
        return update_verdicts(self.catalog, self.in_set, keys, self.rule, self.opts.keep, self.min_confidence)

    def summary(self, n_models: int, scored: Scored, pairs: tuple[int, int], todo: int, counts: dict) -> str:
        """The run's one-line summary; ``pairs`` is (downloaded pairs, pending pairs) at its start."""
        n_pairs, n_pending = pairs
        left = f", {n_pending - todo} left by --limit" if todo < n_pending else ""
        threshold = "" if self.min_confidence is None else f" (MSP >= {self.min_confidence:g})"
        keep = self.opts.keep
        verdict_rule = keep if self.min_confidence is None else keep[:3] + " models confident"
        return (
            f"filter: scored {scored.images} image(s) ({scored.pairs} pair(s), {len(scored.failed)} "
            f"image(s) failed, {scored.rechecked} re-checked in fp32) with {n_models} model(s), {self.rule} over "
            f"{len(self.wnids)} classes{threshold}; {n_pairs - n_pending} pair(s) already scored{left}; "
            f"verdicts ({verdict_rule}): kept {counts['kept']}, discarded {counts['discarded']}, "
            f"failed {counts['failed']}"
        )


def make_plan(args: argparse.Namespace, settings: Any, opts: FilterOptions, cluster: Any = None) -> Plan:
    """Open the catalog and resolve the rule, threshold, label space and scored classes; check the
    image store from here and every node of ``cluster``."""
    from sqlalchemy import func, select

    from curation.catalog import ImageClass, open_catalog
    from curation.kinds import catalog_kind

    catalog = open_catalog(settings.db_url)
    with catalog.session() as session:
        kind = catalog_kind(session)
        rule, min_confidence = rule_and_threshold(args, opts, kind)
        wnids, sources = label_space(session, kind, args.classes)
        every_class = not kind.ood and len(wnids) == session.scalar(select(func.count()).select_from(ImageClass))
    in_set = None if every_class else sources
    return Plan(
        catalog, opts, rule, min_confidence, wnids, in_set, settings.data_dir, open_reader(settings, cluster=cluster)
    )


def nothing_to_do(plan: Plan) -> str | None:
    """The summary line of a run with nothing to score, decided without torch; None when the run has
    work, or when this cannot be known without loading a model (weights never recorded, a class set or
    threshold changed since the models' last run). Verdicts still follow a changed keep rule."""
    with plan.catalog.session() as session:
        keys = []
        for name, checkpoint in plan.opts.models_and_checkpoints():
            weights_hash = known_weights_hash(session, name, checkpoint)
            if weights_hash is None:
                return None
            keys.append((name, weights_hash))
        if len(set(keys)) < len(keys):
            return None  # the full path names the mistake
        if not unchanged_since_last_run(session, keys, plan.rule, plan.wnids, plan.min_confidence):
            return None
        pending = plan.pending(session, keys)
        if pending.pairs[1]:
            return None
        plan.all_scored(session, keys, pending)
    record_threshold(plan)
    return plan.summary(len(keys), Scored(), pending.pairs, 0, plan.verdicts(keys))


def record_threshold(plan: Plan) -> None:
    """Store the MSP threshold in force (ImageNet-O) for the release's datasheet."""
    from curation.catalog import Meta

    if plan.min_confidence is not None:
        with plan.catalog.session() as session:
            session.merge(Meta(key=MIN_CONFIDENCE_META, value=repr(plan.min_confidence)))
