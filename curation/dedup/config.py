"""The ``[dedup]`` options, the match rule's defaults and the rule in force."""

from __future__ import annotations

import os
from dataclasses import dataclass

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


@options.table("dedup")
@dataclass(frozen=True)
class DedupOptions:
    """The ``[dedup]`` table; flags of the same name win."""

    workers: int | None = None  # hashing processes (None: the CPU count)
    orientations: int = DEFAULT_ORIENTATIONS
    max_distance: int | None = None  # None: DEFAULT_MAX_DISTANCES[orientations]
    dhash_margin: int = DEFAULT_DHASH_MARGIN
    against: tuple[str, ...] = ()

    def __post_init__(self) -> None:
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
class Match:
    """The match rule in force."""

    max_distance: int
    margin: int
    orientations: int
    rule: str
