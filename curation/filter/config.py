"""The filter's settings: the ``[filter]`` table, its rules and the kind's rule and threshold."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from curation import options
from curation.errors import CurationError

DEFAULT_MODEL = "resnet50.tv_in1k"
RULES = ("restricted", "top1")
KEEP_RULES = ("all-wrong", "any-wrong")
FAILED = "failed"
# --until-crawl-ends without a crawl holding the lock yet: how long a follower waits for one to start
# (`make crawl & make filter ARGS="--follow --until-crawl-ends"` may start the filter first; the crawl
# takes its lock within ~2 s of starting here) before it ends once nothing is pending.
FOLLOW_GRACE_S = 15.0


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


def rule_and_threshold(args: argparse.Namespace, opts: FilterOptions, kind: Any) -> tuple[str, float | None]:
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
