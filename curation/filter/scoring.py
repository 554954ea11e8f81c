"""Scoring pending pairs with loaded models, locally or on a cluster, one committed chunk at a time."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from curation.engine import Task
from curation.errors import CurationError
from curation.filter.config import FAILED
from curation.filter.judging import judge, msp_near_threshold, own_class_scores
from curation.filter.pending import PAGE_PAIRS, Pair, pending_page
from curation.store.reader import ImageRef

# Images per cluster batch (one decode task, one call of a model's actor): 19 MB of 224 px crops
# between them, a GPU batch, a few seconds of CPU inference; chunks spread over the workers while
# each still commits (and a lost worker repeats) little.
CLUSTER_CHUNK = 128


# Below this many images a local run decodes in its own process instead of starting decode workers:
# on 2 shared cores (load ~6), --limit 100 of EfficientNet-Lite0 took 26 s with the default worker and
# 21 s without (benchmarks/scale.py catalogs); a worker only pays once its overlap outlasts its start.
WORKER_MIN_IMAGES = 256


class DecodeTask(Task):
    """The filter's first stage on a cluster: a CPU worker reads (from the image store, with the node's
    own credentials), decodes and crops a batch of (position, image ref) for the model, as the local
    run's DataLoader workers do."""

    def __init__(self, data_config: dict) -> None:
        self.data_config = data_config

    def setup(self) -> None:
        from curation.inference import Preprocess

        self.preprocess = Preprocess(self.data_config)

    def run(self, batch: list[tuple[int, str]]) -> Any:
        from curation.inference import decode_chunk

        return decode_chunk(self.preprocess, [path for _, path in batch], start=batch[0][0])


class ScoreTask(Task):
    """The filter's second stage on a cluster: logits of decoded chunks in a long-lived worker that
    loads the model once (on its GPU when it has one), with the local run's exact fp32 re-check."""

    resource = "gpu"

    def __init__(
        self,
        name: str,
        checkpoint: str | None,
        weights_hash: str,
        pipeline: dict,
        argmax_over: list[int] | None,
        min_confidence: float | None = None,
    ) -> None:
        self.name, self.checkpoint, self.weights_hash = name, checkpoint, weights_hash
        self.pipeline, self.argmax_over, self.min_confidence = pipeline, argmax_over, min_confidence

    def setup(self) -> None:
        from curation.inference import load_model

        self.loaded = load_model(self.name, self.checkpoint)
        if self.loaded.weights_hash != self.weights_hash:
            raise CurationError(
                f"{self.name} on this worker has weights {self.loaded.weights_hash}, the driver's "
                f"{self.weights_hash}: every node needs the same checkpoint at the same path"
            )

    def run(self, decoded: Any) -> list[Any]:
        from curation.inference import score_decoded

        pipeline = dict(self.pipeline)
        if self.loaded.device.type == "cpu":
            pipeline["workers"] = 0  # a CPU actor holds one core: the re-check decodes in it
        if self.min_confidence is not None:
            pipeline["near_decision"] = msp_near_threshold(self.argmax_over, self.min_confidence)
        return [score_decoded(self.loaded, decoded, argmax_over=self.argmax_over, **pipeline)]


def cluster_logits(
    cluster: Any, decode: DecodeTask, score: ScoreTask, paths: list[ImageRef], chunk: int, bar: Any
) -> Iterator[Any]:
    """Chunks of logits from a cluster, in the order they finish: decoded by CPU tasks, scored by
    the model's actors."""
    items = list(enumerate(paths))
    for part in cluster.pipeline(decode, score, items, batch_size=chunk, workers=1):
        bar.update(len(part.logits))
        yield part


def score_model(
    catalog: Any,
    loaded: Any,
    rule: str,
    columns: list[int],
    pairs: list[Pair],
    pipeline: dict[str, Any],
    chunk: int,
    bar: Any,
    min_confidence: float | None = None,
    cluster_tasks: tuple[Any, DecodeTask, ScoreTask] | None = None,
    stop: Callable[[], bool] | None = None,
    store: Any = None,
) -> tuple[list[Pair], set[str], int]:
    """Score ``pairs`` with one model through one input pipeline, committing one chunk of images at a
    time; returns the pairs committed, the images that failed and how many were re-checked in fp32.
    With ``min_confidence`` (ImageNet-O), the re-check band follows the MSP threshold and ``correct``
    stays empty. ``stop()`` is asked after each committed chunk: True ends the pass there. ``store``: a
    :class:`curation.features.FeatureStore` that gets each chunk's pooled pre-logits (dedup's embeddings)
    before its predictions commit."""
    from sqlalchemy import insert

    from curation.catalog import Prediction
    from curation.inference import iter_logits

    restricted_to = columns if rule in ("restricted", "msp") else None
    if min_confidence is not None:
        pipeline = {**pipeline, "near_decision": msp_near_threshold(columns, min_confidence)}
    by_image: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_image.setdefault(pair.sha256, []).append(pair)
    images = list(by_image)
    paths = [by_image[sha][0].path for sha in images]
    if cluster_tasks is None and pipeline.get("workers") is None and len(images) < WORKER_MIN_IMAGES:
        pipeline = {**pipeline, "workers": 0}  # decode in this process: a worker costs more than it overlaps
    failed: set[str] = set()
    committed: list[Pair] = []
    rechecked = 0
    if store is not None:
        pipeline = {**pipeline, "features": True}
    if cluster_tasks is None:
        parts = iter_logits(loaded, paths, chunk_size=chunk, argmax_over=restricted_to, bar=bar, **pipeline)
    else:
        parts = cluster_logits(*cluster_tasks, paths, min(chunk, CLUSTER_CHUNK), bar)
    for part in parts:
        shas = images[part.start : part.start + len(part.logits)]
        rows, part_failed = prediction_rows(part, shas, by_image, loaded, rule, restricted_to, min_confidence)
        failed |= part_failed
        rechecked += part.rechecked
        if store is not None and part.features is not None:
            good = [k for k in range(len(shas)) if part.start + k not in part.errors]
            store.append([shas[k] for k in good], part.features[good])
        with catalog.session() as session:
            if rows:
                session.execute(insert(Prediction), rows)
        committed += [pair for sha in shas for pair in by_image[sha]]
        if stop is not None and stop():
            parts.close()  # ends the input pipeline and its workers now
            break
    return committed, failed, rechecked


def prediction_rows(
    part: Any,
    shas: list[str],
    by_image: dict[str, list[Pair]],
    loaded: Any,
    rule: str,
    restricted_to: list[int] | None,
    min_confidence: float | None,
) -> tuple[list[dict[str, Any]], set[str]]:
    """The prediction rows of one scored chunk (a failed row per pair of an unreadable image), and the
    images that failed. Each row holds the decision fields of :func:`judge` and the probability and rank
    of the pair's own class under the rule (:func:`own_class_scores`), from the same logits."""
    errors = {position - part.start: error for position, error in part.errors.items()}
    ok = [position for position in range(len(shas)) if position not in errors]
    judged = dict(zip(ok, judge(part.logits[ok], loaded.label_wnids, restricted_to), strict=True))
    index_of = {wnid: i for i, wnid in enumerate(loaded.label_wnids)}
    wanted = [(position, pair) for position in ok for pair in by_image[shas[position]]]
    own = own_class_scores(
        part.logits, restricted_to, [position for position, _ in wanted], [index_of.get(p.wnid, -1) for _, p in wanted]
    )
    scores = {(position, pair.wnid): score for (position, pair), score in zip(wanted, own, strict=True)}
    rows, failed = [], set()
    for position, sha in enumerate(shas):
        error = errors.get(position)
        if error is not None:
            failed.add(sha)
        for pair in by_image[sha]:
            key = {"sha256": sha, "wnid": pair.wnid, "model": loaded.name, "weights_hash": loaded.weights_hash}
            if error is not None:
                rows.append({**key, "rule": rule, "status": FAILED, "error": error})
                continue
            fields = judged[position]
            correct = None if min_confidence is not None else fields["pred_wnid"] == pair.wnid
            class_prob, class_rank = scores[(position, pair.wnid)]
            rows.append(
                {**key, "rule": rule, **fields, "correct": correct, "class_prob": class_prob, "class_rank": class_rank}
            )
    return rows, failed


@dataclass
class Scored:
    """What a run scored: distinct images, pairs, images that failed, images re-checked in fp32."""

    images: int = 0
    pairs: int = 0
    failed: set[str] = field(default_factory=set)
    rechecked: int = 0


def score_pages(
    catalog: Any,
    models: list[tuple[Any, list[int]]],
    where: tuple,
    pages: tuple[int | None, int | None, int | None],
    scoring: tuple[dict, int, float | None],
    tasks: list[tuple[Any, DecodeTask, ScoreTask] | None],
    stop: Callable[[], bool] | None = None,
    stores: list[Any] | None = None,
) -> Scored:
    """Score pending pairs one page of at most PAGE_PAIRS at a time, each pair by the models that have
    not scored it. ``pages`` is (pairs to score, None: until none is pending; pairs expected, for the
    progress bar; the downloads sequence value after which candidates count, None: all); ``where`` is
    (class set or None, rule, image reader), ``scoring`` (pipeline, chunk, MSP threshold or None), ``tasks``
    each model's cluster task (None: local). ``stop()``, asked after each committed chunk, ends the run
    there. ``stores``: each model's feature store or None."""
    from tqdm import tqdm

    wnids, rule, images = where
    stores = stores or [None] * len(models)
    pipeline, chunk, min_confidence = scoring
    keys = [(loaded.name, loaded.weights_hash) for loaded, _ in models]
    scored = Scored()
    todo, expected, since = pages
    after: tuple[str, str] | None = None
    total = None if expected is None else expected * len(models)
    # Images to score, counted as pairs per model (an image found for two classes counts twice).
    with tqdm(total=total, desc="filter", unit="img", file=sys.stderr, leave=False) as bar:
        while todo is None or scored.pairs < todo:
            limit = PAGE_PAIRS if todo is None else min(PAGE_PAIRS, todo - scored.pairs)
            with catalog.session() as session:
                page = pending_page(session, wnids, keys, rule, images, limit, after, since)
            if not page:
                break
            done: set[tuple[str, str]] = set()
            for k, (loaded, columns) in enumerate(models):
                mine = [pair for pair, scored_by in page if not scored_by[k]]
                committed, failed, rechecked = score_model(
                    catalog,
                    loaded,
                    rule,
                    columns,
                    mine,
                    pipeline,
                    chunk,
                    bar,
                    min_confidence,
                    tasks[k],
                    stop,
                    stores[k],
                )
                done |= {(pair.sha256, pair.wnid) for pair in committed}
                scored.failed |= failed
                scored.rechecked += rechecked
            page_shas = {sha for sha, _ in done}
            scored.images += len(page_shas) - (after is not None and after[0] in page_shas)
            scored.pairs += len(done)
            after = (page[-1][0].sha256, page[-1][0].wnid)
            if stop is not None and stop():
                break
    return scored
