"""The filter stage: resolve settings, load the models, score what is pending, write verdicts, print one line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from curation import options
from curation.cpu_share import cpu_sample
from curation.dedup.config import embedding_model
from curation.engine import open_cluster
from curation.errors import CurationError
from curation.filter.config import FilterOptions
from curation.filter.follow import follow
from curation.filter.judging import msp_log_odds
from curation.filter.plan import Plan, make_plan, nothing_to_do
from curation.filter.rescore import missing_hint, rescore
from curation.filter.scorer import Scorer
from curation.filter.weights import remember_weights

CALIBRATION_QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def run(args: argparse.Namespace, settings: Any) -> int:
    """Score every downloaded pair not yet scored by each model; write predictions and verdicts.
    With ``--follow``, keep scoring new pairs as they are committed until asked to stop."""
    opts = options.resolve(FilterOptions, settings, args)
    _check_flags(args)
    started = cpu_sample()  # before torch's import and the model load: the interval that measures free cores
    cluster = open_cluster(settings, settings.data_dir)  # first: a cluster problem writes nothing
    try:
        plan = make_plan(args, settings, opts, cluster)
        if args.calibrate is None and not args.follow and not args.rescore:
            line = nothing_to_do(plan)
            if line is not None:
                missing_hint(plan.catalog)
                print(line)
                return 0
        models = load_models(plan, args.compile, started if cluster is None else None)
        if args.calibrate is not None:
            return calibrate(args.calibrate, models, opts.workers)
        scorer = Scorer.build(plan, models, cluster, embedding_model(settings, opts))
        if args.rescore:
            return rescore(scorer)
        missing_hint(plan.catalog)
        if args.follow:
            return follow(scorer, until_crawl_ends=args.until_crawl_ends)
        return _score_once(scorer, args.limit)
    finally:
        if cluster is not None:
            cluster.close()


def _check_flags(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise CurationError("--limit must be at least 1")
    if args.until_crawl_ends and not args.follow:
        raise CurationError("--until-crawl-ends goes with --follow")
    if args.follow and (args.limit is not None or args.calibrate is not None):
        raise CurationError("--follow scores every new pair: it does not go with --limit or --calibrate")
    if args.rescore and (args.follow or args.calibrate is not None or args.limit is not None):
        raise CurationError("--rescore fills older predictions: it does not go with --follow, --calibrate or --limit")


def load_models(plan: Plan, compile_model: bool, started: Any) -> list[tuple[Any, list[int]]]:
    """Each model with the output columns of the label space; records which file its weights came from.
    ``started``: a CPU sample from the start of the run, to fit torch's threads to the free cores (None:
    leave them, as on a cluster)."""
    from curation.inference import class_indices, load_model, resolve_device

    device = resolve_device(plan.opts.device)
    models = []
    for name, checkpoint in plan.opts.models_and_checkpoints():
        loaded = load_model(name, checkpoint, device=str(device))
        with plan.catalog.session() as session:
            remember_weights(session, loaded, checkpoint)
        if compile_model:
            import torch

            loaded.model = torch.compile(loaded.model)
        models.append((loaded, class_indices(loaded, plan.wnids)))
    if device.type == "cpu" and started is not None:
        fit_threads(started)
    return models


def _score_once(scorer: Scorer, limit: int | None) -> int:
    """One plain run: the pending pairs (at most ``limit``), then verdicts and the summary line."""
    pending = scorer.prepare()
    n_pending = pending.pairs[1]
    todo = n_pending if limit is None else min(limit, n_pending)
    # Without --limit, score until no page is left: pairs a crawl commits meanwhile may come first in the
    # pair order, and stopping after ``todo`` pairs could leave some counted ones unscored.
    scored = scorer.score(todo if limit is not None else None, pending.since, expected=todo)
    if limit is None:
        scorer.all_scored(pending)
    counts = scorer.plan.verdicts(scorer.keys)
    print(scorer.plan.summary(len(scorer.models), scored, pending.pairs, todo, counts))
    return 0


def fit_threads(started: Any) -> None:
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
