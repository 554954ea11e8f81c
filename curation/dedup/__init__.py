"""`curation dedup`: near-duplicates inside the crawl and leaks from reference sets.

Every downloaded image is hashed once (pHash and dHash of the image and of its mirror image, and
with ``--orientations 8`` also of its rotations by 90°, 180° and 270° and their mirrors,
:mod:`curation.hashing`). Two images are near-duplicates when, in one orientation of one of them,
their pHashes differ in at most ``max_distance`` bits and their dHashes in at most ``max_distance +
dhash_margin`` bits; the defaults (2 orientations, 10 and 4; 8 and 4 with 8 orientations) come from
``benchmarks/dedup_thresholds.py``. Pairs are found with a multi-index-hashing range search
(:mod:`curation.hamming_index`), never all pairs. Near-duplicates form clusters (union-find); in
each, one representative survives: the largest resolution, then the most open licence, then the
earliest found. The others are marked ``duplicate`` of it. A cluster whose images were found for
different classes is flagged ``label_conflict``. With ``--against NAME`` every image is also
checked against a reference set; a match marks its whole cluster ``leaked``.

Subcommands manage reference sets: ``reference add NAME PATH`` (a folder or a text list of
images, hashed in parallel and resumably, or a hash file), ``reference import NAME FILE``, ``reference export NAME FILE``,
``reference list``.

Modules: ``config`` (the ``[dedup]`` table, the rule's defaults), ``cli`` (arguments), ``stage`` (the
run), ``hash_pages`` (hashing new images), ``hash_table`` (hash rows as arrays, clusters), ``rerun``
(the incremental path), ``survivors``, ``references`` (reference-set links), ``writes`` (what changed,
the clustered mark, the crawl's re-finds), ``summary``.
"""

from curation.dedup.cli import register
from curation.dedup.config import (
    DEFAULT_DHASH_MARGIN,
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MAX_DISTANCES,
    DEFAULT_ORIENTATIONS,
    DedupOptions,
)
from curation.dedup.stage import run_stage
from curation.dedup.summary import Summary
from curation.dedup.survivors import licence_rank
from curation.dedup.writes import found_again

__all__ = [
    "DEFAULT_DHASH_MARGIN",
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_MAX_DISTANCES",
    "DEFAULT_ORIENTATIONS",
    "DedupOptions",
    "Summary",
    "found_again",
    "licence_rank",
    "register",
    "run_stage",
]
