"""`curation filter`: the adversarial filter. A fixed classifier (default torchvision's ResNet-50,
timm ``resnet50.tv_in1k``) scores every downloaded (image, class) pair; pairs it gets wrong are kept.

The prediction is the argmax over the logits restricted to the run's class set (the authors'
200-way rule) or, with ``--rule top1``, over the whole label space. One ``Prediction`` row per pair
and model (+ weights hash + rule); one ``FilterVerdict`` per pair combining the models with
``--keep all-wrong|any-wrong``. Pairs already scored by the same model, weights and rule are skipped.

The catalog's dataset kind (`curation init --kind`) decides the label space and what is kept. An
ImageNet-O catalog scores its source classes (every class outside the 200 seeded targets) over the 200
target logits (rule ``msp``) and keeps a pair when the largest softmax probability (MSP) over them is
at least ``--min-confidence`` T; the prediction is the target the photo is confused with.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation import options
from curation.engine import Task, open_cluster
from curation.errors import CurationError

DEFAULT_MODEL = "resnet50.tv_in1k"
RULES = ("restricted", "top1")
KEEP_RULES = ("all-wrong", "any-wrong")
FAILED = "failed"
# Images per cluster batch (one decode task, one call of a model's actor): 19 MB of 224 px crops
# between them, a GPU batch, a few seconds of CPU inference; chunks spread over the workers while
# each still commits (and a lost worker repeats) little.
CLUSTER_CHUNK = 128
# Inexact images (JPEG draft, bf16) whose log-odds(MSP) over the label space lies within this band of
# log-odds(T) are re-run exactly, so keep-by-MSP decisions equal fp32's. Measured by
# benchmarks/msp_errors.py on the 1,500 shared photos (EfficientNet-Lite0, draft + bf16 against full
# decode + fp32, 200 ImageNet-O targets): max |delta log-odds(MSP)| 0.370 (99th percentile 0.172; the
# issue measured 0.31), so 0.75 is 2.0x the largest error. At T = 0.3/0.5/0.7/0.9 the fast path alone
# flips 4/10/4/1 decisions, all inside the band; it re-checks 21/15/9/5 % of these photos.
MSP_RECHECK_BAND = 0.75
CALIBRATION_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


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
    rule: str | None = None  # None: the dataset kind's rule (restricted for ImageNet-A)
    keep: str = "all-wrong"
    min_confidence: float | None = None  # ImageNet-O: keep when MSP over the targets >= this
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: 256 on GPU, 32 on CPU
    workers: int | None = None  # decode processes
    margin_recheck: float | None = None  # None: the measured default of curation.inference
    commit_every: int | None = None  # None: 512 images on CPU, 16384 on GPU

    def __post_init__(self) -> None:
        if self.keep not in KEEP_RULES:
            raise ValueError(f"[filter] keep must be one of {KEEP_RULES}")
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
    parser.add_argument(
        "--min-confidence",
        type=float,
        help="ImageNet-O catalogs (required there, no default): keep a photo when its largest softmax "
        "probability over the 200 targets is at least this (see --calibrate)",
    )
    parser.add_argument(
        "--calibrate",
        type=Path,
        metavar="DIR",
        help="print the model's MSP quantiles over the label space on the images under DIR (in-distribution "
        "photos), to choose --min-confidence; scores nothing",
    )
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


# Below this many images a local run decodes in its own process instead of starting decode workers:
# on 2 shared cores (load ~6), --limit 100 of EfficientNet-Lite0 took 26 s with the default worker and
# 21 s without (benchmarks/scale.py catalogs); a worker only pays once its overlap outlasts its start.
WORKER_MIN_IMAGES = 256

# Pairs read and scored per page: bounds the driver's memory (~0.3 KB a pair) whatever the catalog's size.
PAGE_PAIRS = 50_000


def _label_space(session: Any, kind: Any, classes_arg: str | None) -> tuple[list[str], list[str]]:
    """(label wnids the model is judged over, source wnids whose downloads are scored). ImageNet-A:
    both are the run's classes; ImageNet-O: the kind's 200 targets and the other catalog classes."""
    wnids = _class_set(session, classes_arg)
    if not kind.ood:
        return wnids, wnids
    from curation.classes import read_recipe

    targets = sorted(row["wnid"] for row in read_recipe(kind.recipe))
    return targets, [w for w in wnids if w not in set(targets)]


def _scored_by(key: tuple[str, str], rule: str) -> Any:
    """EXISTS: the candidate's (image, class) pair has a prediction of this model, weights and rule."""
    from sqlalchemy import exists

    from curation.catalog import Candidate, Prediction

    model, weights_hash = key
    return exists().where(
        Prediction.sha256 == Candidate.image_sha256,
        Prediction.wnid == Candidate.wnid,
        Prediction.model == model,
        Prediction.weights_hash == weights_hash,
        Prediction.rule == rule,
    )


def _downloaded_pairs(columns: list[Any], wnids: list[str] | None) -> Any:
    """SELECT ``columns`` over the distinct downloaded (image, class) pairs, in (sha256, wnid) order:
    GROUP BY walks ix_candidates_image_wnid_status and a LIMIT stops it early. The status test is
    written ``status || '' = ?`` so that no index serves it: SQLite, without statistics, otherwise
    picked ix_candidates_status and sorted every downloaded row in a temp B-tree (6 s for a page of 100
    at 300,000 downloads; 16 ms on the pair index). ``wnids`` None means every class."""
    from sqlalchemy import select

    from curation.catalog import DOWNLOADED, Candidate

    stmt = select(*columns).where(Candidate.status.concat("") == DOWNLOADED, Candidate.image_sha256.is_not(None))
    if wnids is not None:
        stmt = stmt.where(Candidate.wnid.in_(wnids))
    return stmt.group_by(Candidate.image_sha256, Candidate.wnid).order_by(Candidate.image_sha256, Candidate.wnid)


def _pending_page(
    session: Any,
    wnids: list[str] | None,
    keys: list[tuple[str, str]],
    rule: str,
    data_dir: Path,
    limit: int,
    after: tuple[str, str] | None,
) -> list[tuple[Pair, list[bool]]]:
    """The next ``limit`` pairs after ``after`` that some model has not scored, each with whether each
    model has: an indexed anti-join per model, never the whole table."""
    from sqlalchemy import and_, func, or_

    from curation.catalog import Candidate, Image

    scored = [_scored_by(key, rule) for key in keys]
    stmt = _downloaded_pairs([Candidate.image_sha256, Candidate.wnid, func.min(Image.path), *scored], wnids)
    stmt = stmt.join(Image, Image.sha256 == Candidate.image_sha256).where(or_(*[~s for s in scored]))
    if after is not None:
        sha, wnid = after
        stmt = stmt.where(or_(Candidate.image_sha256 > sha, and_(Candidate.image_sha256 == sha, Candidate.wnid > wnid)))
    rows = session.execute(stmt.limit(limit)).all()
    return [(Pair(sha, wnid, data_dir / path), [bool(v) for v in done]) for sha, wnid, path, *done in rows]


def _count_pairs(session: Any, wnids: list[str] | None, keys: list[tuple[str, str]], rule: str) -> tuple[int, int]:
    """(all downloaded pairs, pairs some model has not scored): two aggregate counts."""
    from sqlalchemy import func, or_, select

    from curation.catalog import Candidate

    pairs = _downloaded_pairs([Candidate.image_sha256], wnids).order_by(None)
    total = session.scalar(select(func.count()).select_from(pairs.subquery()))
    pending = pairs.where(or_(*[~_scored_by(key, rule) for key in keys]))
    return int(total or 0), int(session.scalar(select(func.count()).select_from(pending.subquery())) or 0)


def _forget_other_class_sets(session: Any, model: str, weights_hash: str, rule: str, wnids: list[str]) -> None:
    """A restricted prediction depends on the class set: when it changed since this model's last
    restricted run, drop that model's predictions (and the verdicts built on them) to rescore them."""
    import hashlib

    from sqlalchemy import delete, func, select

    from curation.catalog import FilterVerdict, Meta, Prediction

    if rule != "restricted":
        return
    key = "filter:" + hashlib.sha256(f"{model}@{weights_hash}:{rule}".encode()).hexdigest()[:16]
    class_set = hashlib.sha256(",".join(sorted(wnids)).encode()).hexdigest()[:16]
    meta = session.get(Meta, key)
    if meta is not None and json.loads(meta.value)["class_set"] != class_set:
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
    value = json.dumps({"model": model, "weights_hash": weights_hash, "class_set": class_set, "classes": len(wnids)})
    session.merge(Meta(key=key, value=value))


def msp_log_odds(logits: Any, columns: list[int]) -> Any:
    """log(MSP / (1 - MSP)) of each row over ``columns``, computed stably: the largest logit minus the
    log-sum-exp of the others (NaN rows stay NaN)."""
    import numpy as np

    sub = np.asarray(logits, dtype=np.float64)[:, columns]
    top = np.sort(sub, axis=1)
    best, others = top[:, -1], top[:, :-1]
    peak = others.max(axis=1, keepdims=True)
    return best - (peak[:, 0] + np.log(np.exp(others - peak).sum(axis=1)))


def log_odds(probability: float) -> float:
    """log(p / (1 - p)) of a probability strictly between 0 and 1."""
    import math

    return math.log(probability / (1 - probability))


def msp_near_threshold(columns: list[int], threshold: float) -> Any:
    """A re-check predicate for :func:`curation.inference.iter_logits`: rows whose log-odds(MSP) over
    ``columns`` is within :data:`MSP_RECHECK_BAND` of log-odds(``threshold``)."""
    import numpy as np

    target = log_odds(threshold)
    return lambda logits: np.abs(np.nan_to_num(msp_log_odds(logits, columns), nan=np.inf) - target) < MSP_RECHECK_BAND


def _forget_near_new_threshold(session: Any, model: str, weights_hash: str, threshold: float) -> None:
    """Approximate MSPs were re-checked only near the threshold of their run: when T changed since this
    model's last run, drop its predictions whose MSP lies within the band of the new T (they are rescored,
    re-checked against the new T); the others cannot flip."""
    import hashlib
    import math

    from sqlalchemy import delete

    from curation.catalog import Meta, Prediction

    key = "filter-msp:" + hashlib.sha256(f"{model}@{weights_hash}".encode()).hexdigest()[:16]
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
    value = json.dumps({"model": model, "weights_hash": weights_hash, "min_confidence": threshold})
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


class DecodeTask(Task):
    """The filter's first stage on a cluster: a CPU worker reads, decodes and crops a batch of
    (position, absolute path) for the model, as the local run's DataLoader workers do."""

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


def _cluster_logits(
    cluster: Any, decode: DecodeTask, score: ScoreTask, paths: list[Path], chunk: int, bar: Any
) -> Iterator[Any]:
    """Chunks of logits from a cluster, in the order they finish: decoded by CPU tasks, scored by
    the model's actors."""
    items = [(position, str(path.absolute())) for position, path in enumerate(paths)]
    for part in cluster.pipeline(decode, score, items, batch_size=chunk, workers=1):
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
    min_confidence: float | None = None,
    cluster_tasks: tuple[Any, DecodeTask, ScoreTask] | None = None,
) -> tuple[set[str], int]:
    """Score ``pairs`` with one model through one input pipeline, committing one chunk of images at a
    time; returns the images that failed and how many were re-checked in fp32. With ``min_confidence``
    (ImageNet-O), the re-check band follows the MSP threshold and ``correct`` stays empty."""
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
    failed: set[str] = set()
    rechecked = 0
    if cluster_tasks is None:
        parts = iter_logits(loaded, paths, chunk_size=chunk, argmax_over=restricted_to, bar=bar, **pipeline)
    else:
        parts = _cluster_logits(*cluster_tasks, paths, min(chunk, CLUSTER_CHUNK), bar)
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
                    else {
                        **judged[position],
                        "correct": None if min_confidence is not None else judged[position]["pred_wnid"] == pair.wnid,
                    }
                )
                key = {"sha256": sha, "wnid": pair.wnid, "model": loaded.name, "weights_hash": loaded.weights_hash}
                rows.append({**key, "rule": rule, **fields})
        with catalog.session() as session:
            if rows:
                session.execute(insert(Prediction), rows)
    return failed, rechecked


VERDICTS_META = "filter:verdicts"  # {"models", "rule", "keep", "through_id": last prediction id judged}


def _verdict_config(keys: list[tuple[str, str]], rule: str, keep: str, min_confidence: float | None) -> dict[str, Any]:
    return {"models": sorted(f"{m}@{h}" for m, h in keys), "rule": rule, "keep": keep, "min_confidence": min_confidence}


def _update_verdicts(
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

    config = _verdict_config(keys, rule, keep, min_confidence)
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


def run(args: argparse.Namespace, settings: Any) -> int:
    """Score every downloaded pair not yet scored by each model; write predictions and verdicts."""
    opts = options.resolve(FilterOptions, settings, args)
    if args.limit is not None and args.limit < 1:
        raise CurationError("--limit must be at least 1")
    cluster = open_cluster(settings, settings.data_dir)  # first: a cluster problem writes nothing
    try:
        return _run(args, settings, opts, cluster)
    finally:
        if cluster is not None:
            cluster.close()


def _run(args: argparse.Namespace, settings: Any, opts: FilterOptions, cluster: Any) -> int:
    """The stage on the local engine (``cluster`` None) or on a cluster."""
    from sqlalchemy import func, select

    from curation.cpu_share import cpu_sample

    started = cpu_sample()  # before torch's import and the model load: the interval that measures free cores

    from curation.catalog import ImageClass, Meta, open_catalog
    from curation.kinds import catalog_kind

    catalog = open_catalog(settings.db_url)
    with catalog.session() as session:
        kind = catalog_kind(session)
    rule, min_confidence = _rule_and_threshold(args, opts, kind)
    keep, batch_size, commit_every = opts.keep, opts.batch_size, opts.commit_every
    specs = opts.models_and_checkpoints()
    with catalog.session() as session:
        wnids, sources = _label_space(session, kind, args.classes)
        every_class = not kind.ood and len(wnids) == session.scalar(select(func.count()).select_from(ImageClass))
    from curation.inference import class_indices, default_batch_size, load_model, resolve_device

    device = resolve_device(opts.device)
    models = []
    for name, checkpoint in specs:
        loaded = load_model(name, checkpoint, device=str(device))
        if args.compile:
            import torch

            loaded.model = torch.compile(loaded.model)
        models.append((loaded, class_indices(loaded, wnids)))
    if device.type == "cpu" and cluster is None:
        _fit_threads(started)
    if args.calibrate is not None:
        return calibrate(args.calibrate, models, opts.workers)
    keys = [(loaded.name, loaded.weights_hash) for loaded, _ in models]
    if len(set(keys)) < len(keys):
        raise CurationError("the same model with the same weights is given twice")
    in_set = None if every_class else sources
    with catalog.session() as session:
        for key in keys:
            _forget_other_class_sets(session, *key, rule, wnids)
            if min_confidence is not None:
                _forget_near_new_threshold(session, *key, min_confidence)
        if min_confidence is not None:
            session.merge(Meta(key="filter:min_confidence", value=repr(min_confidence)))
        n_pairs, n_pending = _count_pairs(session, in_set, keys, rule)
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
    widest = max(len(loaded.label_wnids) for loaded, _ in models) or 1000
    chunk = min(commit_every or default_chunk, 2**26 // widest)

    def argmax_over(columns: list[int]) -> list[int] | None:
        return columns if rule in ("restricted", "msp") else None

    tasks: list[tuple[Any, DecodeTask, ScoreTask] | None] = [None] * len(models)
    if cluster is not None:
        tasks = [
            (
                cluster,
                DecodeTask(loaded.data_config),
                ScoreTask(loaded.name, ckpt, loaded.weights_hash, pipeline, argmax_over(columns), min_confidence),
            )
            for (loaded, columns), (_, ckpt) in zip(models, specs, strict=True)
        ]
    todo = n_pending if args.limit is None else min(args.limit, n_pending)
    if cluster is None and opts.workers is None and todo < WORKER_MIN_IMAGES:
        pipeline["workers"] = 0  # decode in this process: a worker costs more than it overlaps
    where = (in_set, rule, settings.data_dir)
    scored = _score_pages(catalog, models, where, todo, (pipeline, chunk, min_confidence), tasks)
    counts = _update_verdicts(catalog, in_set, keys, rule, keep, min_confidence)
    left = f", {n_pending - todo} left by --limit" if todo < n_pending else ""
    threshold = "" if min_confidence is None else f" (MSP >= {min_confidence:g})"
    verdict_rule = keep if min_confidence is None else keep[:3] + " models confident"
    print(
        f"filter: scored {scored.images} image(s) ({scored.pairs} pair(s), {len(scored.failed)} "
        f"image(s) failed, {scored.rechecked} re-checked in fp32) with "
        f"{len(models)} model(s), {rule} over {len(wnids)} classes{threshold}; {n_pairs - n_pending} pair(s) "
        f"already scored{left}; verdicts ({verdict_rule}): kept {counts['kept']}, discarded {counts['discarded']}, "
        f"failed {counts['failed']}"
    )
    return 0


def _fit_threads(started: Any) -> None:
    """One torch thread per core that other processes left free while this run started up."""
    import torch

    from curation.cpu_share import threads_for_free_cores

    threads = threads_for_free_cores(started)
    if threads is not None and threads != torch.get_num_threads():
        print(
            f"filter: {threads} of {torch.get_num_threads()} cores free: inference uses {threads} thread(s)",
            file=sys.stderr,
        )
        torch.set_num_threads(threads)


@dataclass
class _Scored:
    """What a run scored: distinct images, pairs, images that failed, images re-checked in fp32."""

    images: int = 0
    pairs: int = 0
    failed: set[str] = field(default_factory=set)
    rechecked: int = 0


def _score_pages(
    catalog: Any,
    models: list[tuple[Any, list[int]]],
    where: tuple,
    todo: int,
    scoring: tuple[dict, int, float | None],
    tasks: list[tuple[Any, DecodeTask, ScoreTask] | None],
) -> _Scored:
    """Score ``todo`` pending pairs, one page of at most PAGE_PAIRS at a time, each pair by the models
    that have not scored it; ``where`` is (class set or None, rule, data dir), ``scoring`` (pipeline,
    chunk, MSP threshold or None), ``tasks`` each model's cluster task (None: local)."""
    from tqdm import tqdm

    wnids, rule, data_dir = where
    pipeline, chunk, min_confidence = scoring
    keys = [(loaded.name, loaded.weights_hash) for loaded, _ in models]
    scored = _Scored()
    after: tuple[str, str] | None = None
    # Images to score, counted as pairs per model (an image found for two classes counts twice).
    with tqdm(total=todo * len(models), desc="filter", unit="img", file=sys.stderr, leave=False) as bar:
        while scored.pairs < todo:
            with catalog.session() as session:
                page = _pending_page(session, wnids, keys, rule, data_dir, min(PAGE_PAIRS, todo - scored.pairs), after)
            if not page:
                break
            images = {pair.sha256 for pair, _ in page}
            scored.images += len(images) - (after is not None and after[0] in images)
            for k, (loaded, columns) in enumerate(models):
                mine = [pair for pair, done in page if not done[k]]
                failed, rechecked = _score_model(
                    catalog, loaded, rule, columns, mine, pipeline, chunk, bar, min_confidence, tasks[k]
                )
                scored.failed |= failed
                scored.rechecked += rechecked
            scored.pairs += len(page)
            after = (page[-1][0].sha256, page[-1][0].wnid)
    return scored


def _rule_and_threshold(args: argparse.Namespace, opts: FilterOptions, kind: Any) -> tuple[str, float | None]:
    """The prediction rule and, for a keep-by-confidence kind, the required MSP threshold."""
    rule, threshold = opts.rule, opts.min_confidence
    if kind.keep_rule != "confident":
        if threshold is not None and args.calibrate is None:
            raise CurationError(f"--min-confidence applies to ImageNet-O catalogs; this one is {kind.name}")
        rule = rule or kind.filter_rule
        if rule not in RULES:
            raise CurationError(f"[filter] rule must be one of {RULES}")
        return rule, None
    if rule is not None and rule != kind.filter_rule:
        raise CurationError(f"--rule does not apply to {kind.name} catalogs: they score MSP over the 200 targets")
    if threshold is None and args.calibrate is None:
        raise CurationError(
            f"{kind.name} needs --min-confidence T (or [filter] min_confidence): keep photos whose MSP over the "
            "targets is >= T; `curation filter --calibrate DIR` prints MSP quantiles on in-distribution photos"
        )
    if threshold is not None and not 0 < threshold < 1:
        raise CurationError(f"--min-confidence must be between 0 and 1 (exclusive), got {threshold}")
    return kind.filter_rule, threshold


def calibrate(folder: Path, models: list[tuple[Any, list[int]]], workers: int | None) -> int:
    """Print each model's MSP quantiles over the label space on the images under ``folder`` (exact
    path: full decode, fp32), to help choose ``--min-confidence``."""
    import numpy as np

    from curation.inference import predict_logits

    if not folder.is_dir():
        raise CurationError(f"--calibrate {folder}: not a folder")
    suffixes = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not paths:
        raise CurationError(f"--calibrate {folder}: no images (.jpg, .png, .webp, ...) found")
    for loaded, columns in models:
        result = predict_logits(loaded, paths, precision="fp32", draft=False, workers=workers, progress="calibrate")
        ok = ~np.isnan(result.logits).any(axis=1)
        msp = 1 / (1 + np.exp(-msp_log_odds(result.logits[ok], columns)))
        quantiles = ", ".join(
            f"{int(q * 100)}%: {v:.4f}"
            for q, v in zip(CALIBRATION_QUANTILES, np.quantile(msp, CALIBRATION_QUANTILES), strict=True)
        )
        print(
            f"calibrate {loaded.name}: MSP over {len(columns)} classes on {int(ok.sum())} image(s) of {folder} "
            f"({len(paths) - int(ok.sum())} unreadable): {quantiles}"
        )
    return 0
