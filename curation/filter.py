"""`curation filter`: the adversarial filter. A fixed classifier (default torchvision's ResNet-50,
timm ``resnet50.tv_in1k``) scores every downloaded (image, class) pair; pairs it gets wrong are kept.

The prediction is the argmax over the logits restricted to the run's class set (the authors'
200-way rule) or, with ``--rule top1``, over the whole label space. One ``Prediction`` row per pair
and model (+ weights hash + rule); one ``FilterVerdict`` per pair combining the models with
``--keep all-wrong|any-wrong``. Pairs already scored by the same model, weights and rule are skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation import options
from curation.engine import Task, open_cluster
from curation.errors import CurationError

DEFAULT_MODEL = "resnet50.tv_in1k"
RULES = ("restricted", "top1")
KEEP_RULES = ("all-wrong", "any-wrong")
FAILED = "failed"
# Images per cluster task: a few seconds of CPU inference, so chunks spread over the workers while
# each still commits (and a lost worker repeats) little.
CLUSTER_CHUNK = 128


@dataclass
class Pair:
    """One (image, class) pair to judge."""

    sha256: str
    wnid: str
    path: Path


@options.table("filter")
@dataclass(frozen=True)
class FilterOptions:
    """The ``[filter]`` table; flags of the same name win."""

    model: tuple[str, ...] = (DEFAULT_MODEL,)
    checkpoint: tuple[str, ...] = ()  # one timm state dict file per model (empty: the hub)
    rule: str = "restricted"
    keep: str = "all-wrong"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: 256 on GPU, 32 on CPU
    workers: int | None = None  # decode processes
    margin_recheck: float | None = None  # None: the measured default of curation.inference
    commit_every: int | None = None  # None: 512 images on CPU, 16384 on GPU

    def __post_init__(self) -> None:
        if self.rule not in RULES or self.keep not in KEEP_RULES:
            raise ValueError(f"[filter] rule must be one of {RULES} and keep one of {KEEP_RULES}")
        for name, value in (("--batch-size", self.batch_size), ("--commit-every", self.commit_every)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise ValueError("--workers must be 0 or more")
        if self.checkpoint and len(self.checkpoint) != len(self.model):
            raise ValueError(
                f"{len(self.checkpoint)} checkpoint(s) for {len(self.model)} model(s): give one per --model"
            )

    def models_and_checkpoints(self) -> list[tuple[str, str | None]]:
        return list(zip(self.model, self.checkpoint or [None] * len(self.model), strict=True))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "filter",
        help="score downloaded images with fixed classifiers; keep the ones they get wrong",
        description="Run fixed pretrained classifiers over every downloaded (image, class) pair and keep "
        "those they misclassify (argmax restricted to the run's classes, as ImageNet-A was built).",
    )
    parser.add_argument(
        "--model", action="append", help=f"timm model name; repeat for several (default {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        help="timm state dict file, one per --model (default: [filter] checkpoint in curation.toml, else the hub)",
    )
    parser.add_argument("--rule", choices=RULES, help="restricted: argmax over the run's classes (default); top1")
    parser.add_argument("--keep", choices=KEEP_RULES, help="how several models combine (default all-wrong)")
    parser.add_argument("--classes", help="comma-separated wnids to filter (default: every catalog class)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default auto")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast precision (default auto: bf16 on CUDA and CPUs with native bf16, else fp32); "
        "decisions always equal fp32's",
    )
    parser.add_argument("--batch-size", type=int, help="images per batch (default 256 on GPU, 32 on CPU)")
    parser.add_argument("--workers", type=int, help="decode worker processes")
    parser.add_argument("--limit", type=int, help="score at most this many new (image, class) pairs")
    parser.add_argument(
        "--margin-recheck",
        type=float,
        help="re-run exactly (fp32, no draft) inexact images whose top-2 logit margin is below this "
        "(default: max(1.5, 0.17 x the image's largest |logit|), measured by benchmarks/margin_errors.py)",
    )
    parser.add_argument(
        "--commit-every",
        type=int,
        help="images per committed chunk, what a killed run loses at most (default 512 on CPU, 16384 on GPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on large runs)")
    parser.set_defaults(func=run)


def _class_set(session: Any, classes_arg: str | None) -> list[str]:
    from sqlalchemy import select

    from curation.catalog import ImageClass

    known = list(session.scalars(select(ImageClass.wnid).order_by(ImageClass.wnid)))
    if not classes_arg:
        return known
    wanted = sorted({w.strip() for w in classes_arg.split(",") if w.strip()})
    missing = [w for w in wanted if w not in set(known)]
    if missing:
        raise CurationError(f"class {missing[0]} is not in the catalog (add it with `curation classes add`)")
    return wanted


def _pairs(session: Any, wnids: list[str], data_dir: Path) -> list[Pair]:
    from sqlalchemy import select

    from curation.catalog import DOWNLOADED, Candidate, Image

    rows = session.execute(
        select(Candidate.image_sha256, Candidate.wnid, Image.path)
        .join(Image, Image.sha256 == Candidate.image_sha256)
        .where(Candidate.status == DOWNLOADED, Candidate.wnid.in_(wnids))
        .distinct()
        .order_by(Candidate.image_sha256, Candidate.wnid)
    ).all()
    return [Pair(sha, wnid, data_dir / path) for sha, wnid, path in rows]


def _scored(session: Any, model: str, weights_hash: str, rule: str) -> set[tuple[str, str]]:
    from sqlalchemy import select

    from curation.catalog import Prediction

    rows = session.execute(
        select(Prediction.sha256, Prediction.wnid).where(
            Prediction.model == model, Prediction.weights_hash == weights_hash, Prediction.rule == rule
        )
    )
    return {(sha, wnid) for sha, wnid in rows}


def _forget_other_class_sets(session: Any, model: str, weights_hash: str, rule: str, wnids: list[str]) -> None:
    """A restricted prediction depends on the class set: when it changed since this model's last
    restricted run, drop that model's predictions (and the verdicts built on them) to rescore them."""
    import hashlib

    from sqlalchemy import delete, select

    from curation.catalog import FilterVerdict, Meta, Prediction

    if rule != "restricted":
        return
    key = "filter:" + hashlib.sha256(f"{model}@{weights_hash}:{rule}".encode()).hexdigest()[:16]
    class_set = hashlib.sha256(",".join(sorted(wnids)).encode()).hexdigest()[:16]
    meta = session.get(Meta, key)
    if meta is not None and json.loads(meta.value)["class_set"] != class_set:
        scored = Prediction.model == model, Prediction.weights_hash == weights_hash, Prediction.rule == rule
        pairs = session.execute(select(Prediction.sha256, Prediction.wnid).where(*scored)).all()
        print(
            f"filter: the class set changed since {model}'s last restricted run: rescoring {len(pairs)} pair(s)",
            file=sys.stderr,
        )
        session.execute(delete(Prediction).where(*scored))
        shas = sorted({sha for sha, _ in pairs})
        for start in range(0, len(shas), 500):
            session.execute(delete(FilterVerdict).where(FilterVerdict.sha256.in_(shas[start : start + 500])))
    value = json.dumps({"model": model, "weights_hash": weights_hash, "class_set": class_set, "classes": len(wnids)})
    session.merge(Meta(key=key, value=value))


def judge(logits: Any, label_wnids: list[str], columns: list[int] | None) -> list[dict[str, Any]]:
    """Prediction fields of each row of ``logits`` [N, classes]: top-5 over the full label space, the
    argmax over ``columns`` (all when None), its softmax confidence over those columns and its
    probability margin to the runner-up. Vectorised: a GPU chunk of 10^4 rows takes milliseconds."""
    import numpy as np

    def softmax(x: Any) -> Any:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    full = np.asarray(logits, dtype=np.float64)
    full_probs = softmax(full)
    top5 = np.argsort(-full_probs, axis=1, kind="stable")[:, :5]
    cols = np.arange(full.shape[1]) if columns is None else np.asarray(columns)
    sub = full[:, cols]
    probs = softmax(sub)
    order = np.argsort(-sub, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(full))
    best = cols[order[:, 0]]
    confidence = probs[rows, order[:, 0]]
    runner_up = probs[rows, order[:, 1]] if len(cols) > 1 else np.zeros(len(full))
    top5_probs = np.round(np.take_along_axis(full_probs, top5, axis=1), 6)
    return [
        {
            "top5": json.dumps([[int(i), float(p)] for i, p in zip(top5[r], top5_probs[r], strict=True)]),
            "pred_index": int(best[r]),
            "pred_wnid": label_wnids[best[r]],
            "confidence": float(confidence[r]),
            "margin": float(confidence[r] - runner_up[r]),
        }
        for r in rows
    ]


class ScoreTask(Task):
    """Logits of chunks of images on a cluster worker: the model loaded once per worker (on its GPU
    when it has one), the same input pipeline and exact fp32 re-check as the local run."""

    resource = "gpu"

    def __init__(
        self, name: str, checkpoint: str | None, weights_hash: str, pipeline: dict, argmax_over: list[int] | None
    ) -> None:
        self.name, self.checkpoint, self.weights_hash = name, checkpoint, weights_hash
        self.pipeline, self.argmax_over = pipeline, argmax_over

    def setup(self) -> None:
        from curation.inference import load_model

        self.loaded = load_model(self.name, self.checkpoint)
        if self.loaded.weights_hash != self.weights_hash:
            raise CurationError(
                f"{self.name} on this worker has weights {self.loaded.weights_hash}, the driver's "
                f"{self.weights_hash}: every node needs the same checkpoint at the same path"
            )

    def run(self, batch: list[tuple[int, list[str]]]) -> list[Any]:
        from dataclasses import replace

        from curation.inference import iter_logits

        pipeline = dict(self.pipeline)
        if self.loaded.device.type == "cpu":
            pipeline["workers"] = 0  # a CPU task holds one core: decode in it
        parts = []
        for start, paths in batch:
            for part in iter_logits(
                self.loaded, [Path(p) for p in paths], chunk_size=len(paths), argmax_over=self.argmax_over, **pipeline
            ):
                errors = {start + position: error for position, error in part.errors.items()}
                parts.append(replace(part, start=start + part.start, errors=errors))
        return parts


def _cluster_logits(cluster: Any, task: ScoreTask, paths: list[Path], chunk: int, bar: Any) -> Iterator[Any]:
    """Chunks of logits from a cluster, in the order they finish."""
    items = [
        (start, [str(p.absolute()) for p in paths[start : start + chunk]]) for start in range(0, len(paths), chunk)
    ]
    for part in cluster.map(task, items, batch_size=1, workers=1):
        bar.update(len(part.logits))
        yield part


def _score_model(
    catalog: Any,
    loaded: Any,
    rule: str,
    columns: list[int],
    pairs: list[Pair],
    pipeline: dict[str, Any],
    chunk: int,
    bar: Any,
    cluster_task: tuple[Any, ScoreTask] | None = None,
) -> tuple[set[str], int]:
    """Score ``pairs`` with one model through one input pipeline, committing one chunk of images at a
    time; returns the images that failed and how many were re-checked in fp32."""
    from sqlalchemy import insert

    from curation.catalog import Prediction
    from curation.inference import iter_logits

    restricted_to = columns if rule == "restricted" else None
    by_image: dict[str, list[Pair]] = {}
    for pair in pairs:
        by_image.setdefault(pair.sha256, []).append(pair)
    images = list(by_image)
    paths = [by_image[sha][0].path for sha in images]
    failed: set[str] = set()
    rechecked = 0
    if cluster_task is None:
        parts = iter_logits(loaded, paths, chunk_size=chunk, argmax_over=restricted_to, bar=bar, **pipeline)
    else:
        parts = _cluster_logits(*cluster_task, paths, min(chunk, CLUSTER_CHUNK), bar)
    for part in parts:
        shas = images[part.start : part.start + len(part.logits)]
        errors = {position - part.start: error for position, error in part.errors.items()}
        ok = [position for position in range(len(shas)) if position not in errors]
        judged = dict(zip(ok, judge(part.logits[ok], loaded.label_wnids, restricted_to), strict=True))
        rechecked += part.rechecked
        rows = []
        for position, sha in enumerate(shas):
            error = errors.get(position)
            if error is not None:
                failed.add(sha)
            for pair in by_image[sha]:
                fields = (
                    {"status": FAILED, "error": error}
                    if error is not None
                    else {**judged[position], "correct": judged[position]["pred_wnid"] == pair.wnid}
                )
                key = {"sha256": sha, "wnid": pair.wnid, "model": loaded.name, "weights_hash": loaded.weights_hash}
                rows.append({**key, "rule": rule, **fields})
        with catalog.session() as session:
            if rows:
                session.execute(insert(Prediction), rows)
    return failed, rechecked


def _update_verdicts(catalog: Any, pairs: list[Pair], keys: list[tuple[str, str]], rule: str, keep: str) -> dict:
    """Combine the run's models into one verdict per pair; returns counts kept/discarded/failed."""
    from sqlalchemy import delete, insert, select, tuple_

    from curation.catalog import FilterVerdict, Prediction

    counts = {"kept": 0, "discarded": 0, "failed": 0}
    wanted = {(p.sha256, p.wnid) for p in pairs}
    models = json.dumps([f"{m}@{h}" for m, h in keys])
    with catalog.session() as session:
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for model, weights_hash in keys:
            rows = session.execute(
                select(Prediction.sha256, Prediction.wnid, Prediction.status, Prediction.correct).where(
                    Prediction.model == model, Prediction.weights_hash == weights_hash, Prediction.rule == rule
                )
            )
            for sha, wnid, status, correct in rows:
                if (sha, wnid) in wanted:
                    results.setdefault((sha, wnid), {})[f"{model}@{weights_hash}"] = (status, correct)
        judged, verdicts = [], []
        for pair, by_model in results.items():
            if len(by_model) < len(keys):
                continue  # not scored by every model yet (e.g. --limit)
            judged.append(pair)
            if any(status == FAILED for status, _ in by_model.values()):
                counts["failed"] += 1  # no verdict: it could not be judged
                continue
            wrong = [not correct for _, correct in by_model.values()]
            kept = all(wrong) if keep == "all-wrong" else any(wrong)
            counts["kept" if kept else "discarded"] += 1
            verdicts.append({"sha256": pair[0], "wnid": pair[1], "kept": kept, "models": models, "keep_rule": keep})
        for start in range(0, len(judged), 500):  # replace, in one transaction with the inserts
            part = judged[start : start + 500]
            session.execute(delete(FilterVerdict).where(tuple_(FilterVerdict.sha256, FilterVerdict.wnid).in_(part)))
        if verdicts:
            session.execute(insert(FilterVerdict), verdicts)
    return counts


def run(args: argparse.Namespace, settings: Any) -> int:
    """Score every downloaded pair not yet scored by each model; write predictions and verdicts."""
    opts = options.resolve(FilterOptions, settings, args)
    if args.limit is not None and args.limit < 1:
        raise CurationError("--limit must be at least 1")
    specs = opts.models_and_checkpoints()
    cluster = open_cluster(settings, settings.data_dir)  # first: a cluster problem writes nothing
    try:
        return _run(args, settings, opts, specs, cluster)
    finally:
        if cluster is not None:
            cluster.close()


def _run(args: argparse.Namespace, settings: Any, opts: FilterOptions, specs: list, cluster: Any) -> int:
    """The stage on the local engine (``cluster`` None) or on a cluster."""
    from tqdm import tqdm

    from curation.catalog import open_catalog

    rule, keep, batch_size, commit_every = opts.rule, opts.keep, opts.batch_size, opts.commit_every
    catalog = open_catalog(settings.db_url)
    with catalog.session() as session:
        wnids = _class_set(session, args.classes)
        pairs = _pairs(session, wnids, settings.data_dir)
    from curation.inference import class_indices, default_batch_size, load_model, resolve_device

    device = resolve_device(opts.device)
    models = []
    for name, checkpoint in specs:
        loaded = load_model(name, checkpoint, device=str(device))
        models.append((loaded, class_indices(loaded, wnids), checkpoint))
    keys = [(loaded.name, loaded.weights_hash) for loaded, _, _ in models]
    if len(set(keys)) < len(keys):
        raise CurationError("the same model with the same weights is given twice")
    with catalog.session() as session:
        for key in keys:
            _forget_other_class_sets(session, *key, rule, wnids)
        done = {key: _scored(session, *key, rule) for key in keys}
    pending = [p for p in pairs if any((p.sha256, p.wnid) not in done[key] for key in keys)]
    todo = pending if args.limit is None else pending[: args.limit]
    pipeline = {
        "batch_size": batch_size,
        "workers": opts.workers,
        "precision": opts.precision,
        "margin_recheck": opts.margin_recheck,
    }
    # Images per committed chunk (what a killed run loses; one input pipeline serves all chunks): by
    # default seconds of work on a GPU, ~15 s on a CPU; always bounded by the logits buffer (<= 256 MB
    # even for 21k-class heads).
    batches_per_chunk = 64 if device.type == "cuda" else 16
    default_chunk = max(512, batches_per_chunk * (batch_size or default_batch_size(device)))
    widest = max(len(loaded.label_wnids) for loaded, _, _ in models) or 1000
    chunk = min(commit_every or default_chunk, 2**26 // widest)
    failed_images: set[str] = set()
    rechecked = 0
    for loaded, columns, checkpoint in models:
        if args.compile:
            import torch

            loaded.model = torch.compile(loaded.model)
        mine = [p for p in todo if (p.sha256, p.wnid) not in done[(loaded.name, loaded.weights_hash)]]
        n_images = len({p.sha256 for p in mine})
        with tqdm(total=n_images, desc=f"filter {loaded.name}", unit="img", file=sys.stderr, leave=False) as bar:
            cluster_task = None
            if cluster is not None:
                restricted_to = columns if rule == "restricted" else None
                task = ScoreTask(loaded.name, checkpoint, loaded.weights_hash, pipeline, restricted_to)
                cluster_task = (cluster, task)
            failed, model_rechecked = _score_model(
                catalog, loaded, rule, columns, mine, pipeline, chunk, bar, cluster_task
            )
        failed_images |= failed
        rechecked += model_rechecked
    counts = _update_verdicts(catalog, pairs, keys, rule, keep)
    left = f", {len(pending) - len(todo)} left by --limit" if len(todo) < len(pending) else ""
    print(
        f"filter: scored {len({p.sha256 for p in todo})} image(s) ({len(todo)} pair(s), {len(failed_images)} "
        f"image(s) failed, {rechecked} re-checked in fp32) with "
        f"{len(models)} model(s), {rule} over {len(wnids)} classes; {len(pairs) - len(pending)} pair(s) already "
        f"scored{left}; verdicts ({keep}): kept {counts['kept']}, discarded {counts['discarded']}, "
        f"failed {counts['failed']}"
    )
    return 0
