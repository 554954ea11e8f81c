"""Embeddings for the embedding matcher: the filter's stored features, else one forward through the
same inference pipeline and engine, cached by SHA-256 (or reference key) and weights hash.

The weights hash comes without torch when a filter run recorded the checkpoint's bytes
(:mod:`curation.filter.weights`): a rerun whose new images the filter already scored loads no model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation.dedup.config import EmbeddingSpec
from curation.features import FeatureStore, stored_models

if TYPE_CHECKING:
    from curation.catalog import Catalog
    from curation.engine import Executor


# Images per committed feature segment: what a killed run loses (~25 s of Lite0 on one CPU core).
EMBED_CHUNK = 512


# Below this many images the forward decodes in this process (inference's WORKER_MIN_IMAGES reason).
WORKER_MIN_IMAGES = 256


@dataclass
class Embedder:
    """The embedding model of a run: its weights hash, and the model once it had to be loaded."""

    spec: EmbeddingSpec
    weights_hash: str
    loaded: Any = None  # curation.inference.LoadedModel, or None while stored features sufficed

    @property
    def label(self) -> str:
        return f"{self.spec.model}@{self.weights_hash}"


def open_embedder(catalog: Catalog, spec: EmbeddingSpec, load: bool = False) -> Embedder:
    """The embedder of ``spec``: without torch when a run recorded the weights file's hash (and
    ``load`` is False), else with the model loaded (its file's hash recorded for the next run)."""
    from curation.filter.weights import known_weights_hash, remember_weights

    if not load:
        with catalog.session() as session:
            known = known_weights_hash(session, spec.model, spec.checkpoint)
        if known is not None:
            return Embedder(spec, known)
    from curation.inference import load_model

    loaded = load_model(spec.model, spec.checkpoint)
    with catalog.session() as session:
        remember_weights(session, loaded, spec.checkpoint)
    return Embedder(spec, loaded.weights_hash, loaded)


def ensure_features(
    catalog: Catalog,
    data_dir: Path,
    embedder: Embedder,
    items: list[tuple[str, str]],
    executor: Executor | None,
    store: FeatureStore | None = None,
    desc: str = "embedding",
    tiles: bool = False,
) -> tuple[FeatureStore, int, dict[str, str]]:
    """Make sure every (key, image) of ``items`` has a stored vector: those missing get one forward
    (the model is loaded only then). An image is a catalog image's store ref or an absolute path.
    Returns the store, how many were computed now and {key: reason} of the images that could not be
    read. ``store``: another store than the catalog's (a reference set's). ``tiles``: the nine tile
    vectors of each image (:mod:`curation.dedup.tiles`) in the catalog's tile store instead."""
    catalog_images = store is None and not tiles  # a reference set says its own line (ref_embed.open_index)
    if store is None:
        part = "tiles" if tiles else ""
        store = FeatureStore(data_dir, embedder.spec.model, embedder.weights_hash, part)
    missing = [item for item, have in zip(items, store.has([k for k, _ in items]), strict=True) if not have]
    if not missing:
        return store, 0, {}
    if catalog_images and store.dim is None and len(store) == 0:
        _note_other_models(data_dir, embedder, len(missing))
    if embedder.loaded is None:
        reloaded = open_embedder(catalog, embedder.spec, load=True)
        embedder.loaded, embedder.weights_hash = reloaded.loaded, reloaded.weights_hash
    errors = _forward(embedder, missing, store, executor, desc, tiles)
    return store, len(missing) - len(errors), errors


def _note_other_models(data_dir: Path, embedder: Embedder, count: int) -> None:
    """One line when features are stored only for other models or weights: nothing is mixed or lost."""
    others = [label for label in stored_models(data_dir) if label != embedder.label]
    if others:
        print(
            f"dedup: stored features are of {', '.join(others)}, not the requested {embedder.label}: "
            f"computing {count} embeddings (the stored ones stay)",
            file=sys.stderr,
        )


def _forward(
    embedder: Embedder,
    items: list[tuple[str, Any]],
    store: FeatureStore,
    executor: Executor | None,
    desc: str,
    tiles: bool = False,
) -> dict[str, str]:
    """Pooled pre-logits of ``items`` (or of their tiles), appended to ``store`` one chunk at a time;
    returns the failures. A cluster engine runs the filter's decode tasks and scoring actors, the
    local one inference's loop."""
    from tqdm import tqdm

    from curation.dedup.tiles import tile_parts
    from curation.inference import iter_logits

    loaded = embedder.loaded
    keys, paths = [k for k, _ in items], [p for _, p in items]
    no_recheck = {"margin_recheck": float("-inf"), "precision": "auto"}  # features only: no exact re-run
    errors: dict[str, str] = {}
    with tqdm(total=len(items), desc=desc, unit="img", file=sys.stderr, leave=False) as bar:
        if tiles:
            parts = tile_parts(loaded, paths, executor, _score_task(embedder, no_recheck), no_recheck, bar)
        elif executor is None or getattr(executor, "name", "local") == "local":
            workers = 0 if len(items) < WORKER_MIN_IMAGES else None
            batch = min(EMBED_CHUNK, 32)  # a chunk is whole batches
            parts = iter_logits(
                loaded, paths, chunk_size=EMBED_CHUNK, batch_size=batch, workers=workers, bar=bar, features=True,
                **no_recheck,
            )  # fmt: skip
        else:
            parts = _cluster_parts(embedder, items, executor, no_recheck, bar)
        pending: list[tuple[list[str], Any]] = []  # parts not stored yet: fewer than EMBED_CHUNK images
        for part in parts:
            span = range(part.start, part.start + len(part.logits))
            good = [i for i in span if i not in part.errors]
            errors.update({keys[i]: part.errors[i] for i in span if i in part.errors})
            if good:  # (a part whose images all failed has features of no columns)
                pending.append(([keys[i] for i in good], part.features[[i - part.start for i in good]]))
            if sum(len(k) for k, _ in pending) >= EMBED_CHUNK:
                _store(store, pending)
        _store(store, pending)
    return errors


def _store(store: FeatureStore, pending: list[tuple[list[str], Any]]) -> None:
    """Append the pending parts as one segment (a cluster's parts and the tiles' come in chunks of
    32-128 images: a segment each would make the store compact 4-16 times as often)."""
    import numpy as np

    if pending:
        store.append([k for keys, _ in pending for k in keys], np.concatenate([v for _, v in pending]))
        pending.clear()


def _cluster_parts(embedder: Embedder, items: list[tuple[str, str]], executor: Any, pipeline: dict, bar: Any) -> Any:
    """Feature chunks from a cluster: the filter's decode tasks, then its scoring actors."""
    from curation.filter.scoring import CLUSTER_CHUNK, DecodeTask

    loaded, score = embedder.loaded, _score_task(embedder, pipeline)
    positions = [(i, path) for i, (_, path) in enumerate(items)]
    decode = DecodeTask(loaded.data_config)
    for part in executor.pipeline(decode, score, positions, batch_size=CLUSTER_CHUNK, workers=1):
        bar.update(len(part.logits))
        yield part


def _score_task(embedder: Embedder, pipeline: dict) -> Any:
    """The filter's scoring actor for features: the model pass of the local run, on a cluster."""
    from curation.filter.scoring import ScoreTask

    spec = embedder.spec
    return ScoreTask(spec.model, spec.checkpoint, embedder.loaded.weights_hash, {**pipeline, "features": True}, None)
