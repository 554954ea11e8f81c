"""A run's loaded models and how they score: the input pipeline, chunk size and cluster tasks, set up
once and used by a plain run's single pass or by every pass of ``--follow``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from curation.filter.plan import Pending, Plan, record_threshold
from curation.filter.scoring import DecodeTask, Scored, ScoreTask, score_pages
from curation.filter.state import forget_near_new_threshold, forget_other_class_sets

# Batches per committed chunk (what a killed run loses; one input pipeline serves all chunks): seconds
# of work on a GPU, ~15 s on a CPU.
BATCHES_PER_CHUNK = {"cuda": 64, "cpu": 16}


@dataclass
class Scorer:
    """The models of a run (each with its label-space columns) and how they score pending pairs."""

    plan: Plan
    models: list[tuple[Any, list[int]]]
    pipeline: dict[str, Any]
    chunk: int
    tasks: list[tuple[Any, DecodeTask, ScoreTask] | None]
    stores: list[Any] | None = None  # per model: the FeatureStore its pooled pre-logits go to, or None

    @property
    def keys(self) -> list[tuple[str, str]]:
        return [(loaded.name, loaded.weights_hash) for loaded, _ in self.models]

    @classmethod
    def build(cls, plan: Plan, models: list[tuple[Any, list[int]]], cluster: Any, embed: str | None = None) -> Scorer:
        """Refuses the same weights twice; the chunk is bounded by the logits buffer (<= 256 MB even
        for 21k-class heads); on a cluster each model gets a decode task and a scoring actor. The model
        named ``embed`` (dedup's embedding model) also stores its pooled pre-logits, from the same forward."""
        from curation.errors import CurationError
        from curation.features import FeatureStore
        from curation.inference import default_batch_size

        keys = [(loaded.name, loaded.weights_hash) for loaded, _ in models]
        if len(set(keys)) < len(keys):
            raise CurationError("the same model with the same weights is given twice")
        opts = plan.opts
        pipeline = {
            "batch_size": opts.batch_size,
            "workers": opts.workers,
            "precision": opts.precision,
            "margin_recheck": opts.margin_recheck,
        }
        device = models[0][0].device
        default_chunk = max(512, BATCHES_PER_CHUNK[device.type] * (opts.batch_size or default_batch_size(device)))
        widest = max(len(loaded.label_wnids) for loaded, _ in models) or 1000
        chunk = min(opts.commit_every or default_chunk, 2**26 // widest)
        stores = [
            FeatureStore(plan.data_dir, loaded.name, loaded.weights_hash) if loaded.name == embed else None
            for loaded, _ in models
        ]
        tasks: list[tuple[Any, DecodeTask, ScoreTask] | None] = [None] * len(models)
        if cluster is not None:
            argmax = plan.rule in ("restricted", "msp")
            tasks = [
                (
                    cluster,
                    DecodeTask(loaded.data_config),
                    ScoreTask(
                        loaded.name, ckpt, loaded.weights_hash, {**pipeline, "features": store is not None},
                        columns if argmax else None, plan.min_confidence,
                    ),
                )
                for (loaded, columns), (_, ckpt), store in zip(
                    models, opts.models_and_checkpoints(), stores, strict=True
                )
            ]  # fmt: skip
        return cls(plan, models, pipeline, chunk, tasks, stores)

    def prepare(self) -> Pending:
        """Undo what a changed class set or threshold invalidated, record this run's, and count what is
        pending."""
        plan = self.plan
        with plan.catalog.session() as session:
            for key in self.keys:
                forget_other_class_sets(session, *key, plan.rule, plan.wnids)
                if plan.min_confidence is not None:
                    forget_near_new_threshold(session, *key, plan.min_confidence)
        record_threshold(plan)
        with plan.catalog.session() as session:
            return plan.pending(session, self.keys)

    def score(
        self, todo: int | None, since: int | None, stop: Callable[[], bool] | None = None, expected: int | None = None
    ) -> Scored:
        """Score ``todo`` pending pairs (None: until none is pending) of the candidates downloaded after
        ``since`` (None: all), committing chunk by chunk; ``expected`` sizes the progress bar."""
        scoring = (self.pipeline, self.chunk, self.plan.min_confidence)
        pages = (todo, expected if expected is not None else todo, since)
        return score_pages(
            self.plan.catalog, self.models, self.plan.where, pages, scoring, self.tasks, stop, self.stores
        )

    def all_scored(self, pending: Pending) -> None:
        """Record that every pair ``pending`` counted is scored now."""
        with self.plan.catalog.session() as session:
            self.plan.all_scored(session, self.keys, pending)
