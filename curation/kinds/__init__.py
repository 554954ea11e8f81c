"""Dataset kinds: one frozen config per kind drives every stage, as timm's pretrained config drives
preprocessing. A kind says which classes a new catalog is seeded with, which label space the filter
scores over, what it keeps, which folder a released image goes to, how the release is evaluated,
what reviewers are asked and how `status`/`report` group the funnel.

The catalog records its kind in ``catalog_meta`` (key :data:`KIND_META_KEY`, set by `curation init`;
absent means ImageNet-A); every stage reads it through :func:`catalog_kind`. A new kind is one module
with a ``KIND`` plus one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curation.errors import CurationError

KIND_META_KEY = "dataset_kind"
DEFAULT_KIND = "imagenet-a"
CLASSES_DIR = Path(__file__).resolve().parent.parent.parent / "data" / "classes"

# Kind name -> module holding its ``KIND``: one line per kind.
REGISTRY = {
    "imagenet-a": "curation.kinds.imagenet_a",
    "imagenet-o": "curation.kinds.imagenet_o",
}


@dataclass(frozen=True)
class DatasetKind:
    """What makes one dataset kind behave the way it does (read by every stage)."""

    name: str
    title: str  # for summaries and the datasheet
    recipe: Path  # classes a new catalog is seeded with
    recipe_origin: str  # ImageClass.origin of the seeded classes
    # "catalog": the filter scores over the run's catalog classes (an image's class is in the label
    # space); "recipe": over the seeded classes only, and the other catalog classes are crawl sources.
    label_space: str
    filter_rule: str  # Prediction.rule written by the filter
    # "misclassified": keep a pair the model gets wrong; "confident": keep when the top softmax
    # probability over the label space is at least the threshold (needs --min-confidence).
    keep_rule: str
    release_folder: str  # "class": the pair's (crawled) class; "prediction": the model's label
    release_name: str  # default release folder and archive name
    metrics: str  # "adversarial": `curation eval`; "ood": `curation eval --ood`
    review_question: str  # asked above the class name on the review page
    in_distribution_key: bool  # the review page offers "in-distribution" (a reject)
    funnel_by: str  # "class" or "prediction": how status/report group the funnel
    source_rule: str  # "any": any synset may be added; "ood-pool": refuse 1k classes and relatives

    @property
    def ood(self) -> bool:
        """Whether images come from classes outside the label space (out-of-distribution)."""
        return self.label_space == "recipe"


def kind_names() -> list[str]:
    """Every registered kind, in registry order."""
    return list(REGISTRY)


def get_kind(name: str) -> DatasetKind:
    """The kind called ``name``; one line naming the known kinds otherwise."""
    module = REGISTRY.get(name)
    if module is None:
        raise CurationError(f"unknown dataset kind {name!r}; kinds: {', '.join(REGISTRY)}")
    return importlib.import_module(module).KIND


def label_only_wnids(session: Any) -> set[str]:
    """Classes that only name the label space and are not crawled by default (ImageNet-O's 200 targets)."""
    kind = catalog_kind(session)
    if not kind.ood:
        return set()
    from curation.synsets import read_recipe

    return {row["wnid"] for row in read_recipe(kind.recipe)}


def catalog_kind(session: Any) -> DatasetKind:
    """The kind a catalog was initialised with (ImageNet-A when none was recorded)."""
    from curation.catalog import Meta

    row = session.get(Meta, KIND_META_KEY)
    return get_kind(row.value if row is not None else DEFAULT_KIND)
