"""The ``[dedup]`` options, the match rule's defaults and the rule in force."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from curation import options

DEFAULT_ORIENTATIONS = 2


# The loosest pHash distance with no false pair among 30.4 M pairs of distinct photos
# (benchmarks/dedup_thresholds.py): 10 matching each image as itself and its mirror; 8 in all 8
# orientations, where 10 merges 4 pairs of distinct photos.
DEFAULT_MAX_DISTANCES = {2: 10, 8: 8}


DEFAULT_MAX_DISTANCE = DEFAULT_MAX_DISTANCES[DEFAULT_ORIENTATIONS]


DEFAULT_DHASH_MARGIN = 4


ORIENTATION_CHOICES = (2, 8)


MAX_ALLOWED_DISTANCE = 16


MATCHERS = ("hash", "embedding")


# Embedding proposals per image and set: among 908 shared photos the source of a phone screenshot
# ranked up to 114th and of a collage up to 152nd by cosine, but every geometric edit ranked 1st among
# 1,500 (notes/semantic_dedup.md); 20 is the floor, and each proposal costs a verification.
DEFAULT_TOP_K = 20


# Proposals below this cosine are not verified: edited copies of the shared photos sat at >= 0.375
# (crop 20 %, the lowest geometric edit; resize/JPEG/greyscale copies lower, which the hashes own),
# while the median distinct pair is at 0.186.
DEFAULT_COS_FLOOR = 0.35


@options.table("dedup")
@dataclass(frozen=True)
class DedupOptions:
    """The ``[dedup]`` table; flags of the same name win."""

    workers: int | None = None  # hashing processes (None: the CPU count)
    orientations: int = DEFAULT_ORIENTATIONS
    max_distance: int | None = None  # None: DEFAULT_MAX_DISTANCES[orientations]
    dhash_margin: int = DEFAULT_DHASH_MARGIN
    against: tuple[str, ...] = ()
    matchers: tuple[str, ...] = MATCHERS
    model: str | None = None  # the embedding model (None: the filter's first model, whose features come free)
    checkpoint: str | None = None  # its timm state dict (None: the filter's, when the model is the filter's)
    top_k: int = DEFAULT_TOP_K
    cos_floor: float = DEFAULT_COS_FLOOR

    def __post_init__(self) -> None:
        unknown = [m for m in self.matchers if m not in MATCHERS]
        if unknown or not self.matchers:
            raise ValueError(f"[dedup] matchers must be some of {', '.join(MATCHERS)}, got {list(self.matchers)!r}")
        if "hash" not in self.matchers:
            raise ValueError("[dedup] matchers must include hash (it owns re-encodes, resizes, colour and turns)")
        if self.top_k < 1 or not -1.0 <= self.cos_floor < 1.0:
            raise ValueError("--top-k must be at least 1 and --cos-floor in [-1, 1)")
        if self.orientations not in ORIENTATION_CHOICES:
            raise ValueError(f"[dedup] orientations must be 2 or 8, got {self.orientations!r}")
        if self.max_distance is not None and not 0 <= self.max_distance <= MAX_ALLOWED_DISTANCE:
            raise ValueError(f"--max-distance must be between 0 and {MAX_ALLOWED_DISTANCE}, got {self.max_distance}")
        if self.workers is not None and self.workers < 1:
            raise ValueError("--workers must be at least 1")

    @property
    def distance(self) -> int:
        """The pHash threshold in force."""
        return DEFAULT_MAX_DISTANCES[self.orientations] if self.max_distance is None else self.max_distance

    @property
    def processes(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class EmbeddingSpec:
    """The embedding matcher in force: the model, its checkpoint, k and the cosine floor."""

    model: str
    checkpoint: str | None
    top_k: int = DEFAULT_TOP_K
    cos_floor: float = DEFAULT_COS_FLOOR


def embedding_spec(settings: Any, opts: DedupOptions | None = None) -> EmbeddingSpec | None:
    """The embedding matcher of these settings, or None when ``[dedup] matchers`` leaves it out. The
    model defaults to ``[filter] model`` (its first), with ``[filter] checkpoint``."""
    from curation.filter.config import FilterOptions

    opts = opts or options.resolve(DedupOptions, settings)
    if "embedding" not in opts.matchers:
        return None
    model, checkpoint = opts.model, opts.checkpoint
    if model is None:
        model, filter_checkpoint = options.resolve(FilterOptions, settings).models_and_checkpoints()[0]
        checkpoint = checkpoint or filter_checkpoint
    return EmbeddingSpec(model, checkpoint, opts.top_k, opts.cos_floor)


def embedding_model(settings: Any, filter_opts: Any = None) -> str | None:
    """The name of dedup's embedding model, whose features a filter run stores, or None: ``[dedup]
    model``, else the first model of the filter run (``filter_opts``, its flags applied)."""
    opts = options.resolve(DedupOptions, settings)
    if "embedding" not in opts.matchers:
        return None
    if opts.model is None and filter_opts is not None:
        return filter_opts.models_and_checkpoints()[0][0]
    spec = embedding_spec(settings, opts)
    return spec.model if spec else None


@dataclass(frozen=True)
class Match:
    """The match rule in force."""

    max_distance: int
    margin: int
    orientations: int
    rule: str
