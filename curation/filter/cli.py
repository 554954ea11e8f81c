"""`curation filter`'s arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

from curation.filter.config import DEFAULT_MODEL, FOLLOW_GRACE_S, KEEP_RULES, RULES
from curation.filter.stage import run


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
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="fill the probability and rank of each pair's own class in predictions written before the "
        "filter stored them (scores their images again; decisions stay as they are)",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep the model loaded and score new pairs as a crawl running beside it commits them; "
        "Ctrl-C commits the chunk in flight and ends the run",
    )
    parser.add_argument(
        "--until-crawl-ends",
        action="store_true",
        help="with --follow: end once the crawl holding the catalog's crawl lock has finished and nothing is "
        f"pending (without a crawl in sight for {FOLLOW_GRACE_S:g} s, once nothing is pending)",
    )
    parser.set_defaults(func=run)
