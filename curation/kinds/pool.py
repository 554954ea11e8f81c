"""The ImageNet-O source pool at run time, from the committed ``data/classes/imagenet_21k_pool.tsv``
(written by ``python -m curation.kinds.build_pool``): our rule, as the authors published none, is
every ImageNet-21k synset that is not an ImageNet-1k class, not a WordNet hyponym of one and not a
hypernym of one (18,838 synsets)."""

from __future__ import annotations

import csv
import random
from functools import cache

from curation.errors import CurationError
from curation.kinds import CLASSES_DIR

POOL_FILE = CLASSES_DIR / "imagenet_21k_pool.tsv"
POOL_RULE = (
    "every ImageNet-21k synset (timm's imagenet21k_goog_synsets.txt) that is not an ImageNet-1k class, "
    "not a WordNet 3.0 hyponym of one and not a hypernym of one (18,838 synsets; data/classes/imagenet_21k_pool.tsv)"
)


@cache
def pool_table() -> dict[str, dict[str, str]]:
    """wnid -> {lexname, relation, related_1k} for every 21k synset outside 1k."""
    with open(POOL_FILE, newline="", encoding="utf-8") as fh:
        return {row["wnid"]: row for row in csv.DictReader(fh, delimiter="\t")}


def pool_refusal(wnid: str) -> str | None:
    """Why ``wnid`` may not be an ImageNet-O source class (one line), or None when it is in the pool."""
    from curation.synsets import imagenet_1k_wnids, wordnet_lemmas

    name = wordnet_lemmas().get(wnid, wnid).split(",")[0]
    if wnid in set(imagenet_1k_wnids()):
        return f"{wnid} ({name}) is an ImageNet-1k class"
    row = pool_table().get(wnid)
    if row is None:
        return f"{wnid} ({name}) is not an ImageNet-21k synset"
    if row["relation"] == "pool":
        return None
    related = row["related_1k"]
    related_name = wordnet_lemmas().get(related, related).split(",")[0]
    what = "a kind of" if row["relation"] == "hyponym" else "a hypernym of"
    return f"{wnid} ({name}) is {what} the ImageNet-1k class {related} ({related_name})"


def sample_pool(size: int, seed: int, exclude_lexnames: frozenset[str] = frozenset()) -> list[str]:
    """``size`` pool wnids drawn without replacement (sorted), leaving out the given lexnames
    (e.g. ``person``); the whole (filtered) pool when it is smaller."""
    if size < 1:
        raise CurationError("--size must be at least 1")
    wnids = sorted(
        w for w, row in pool_table().items() if row["relation"] == "pool" and row["lexname"] not in exclude_lexnames
    )
    return sorted(random.Random(seed).sample(wnids, min(size, len(wnids))))
