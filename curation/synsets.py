"""ImageNet synsets and class recipes from files alone: timm's WordNet label metadata (found without
importing timm or torch) and the recipe CSVs under data/classes. No catalog here, so the class commands
(curation.classes) and the dataset kinds (curation.kinds) both build on it without importing each other."""

from __future__ import annotations

import csv
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

from curation.errors import CurationError

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "data" / "classes" / "imagenet_a.csv"
QUERY_SEPARATOR = " | "
RECIPE_COLUMNS = ["wnid", "index_1k", "name", "gloss", "queries"]


@cache
def timm_info_dir() -> Path:
    """timm's label metadata folder, found without importing timm (and torch)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise CurationError("timm is not installed: it provides the ImageNet label metadata")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"


def read_tsv(name: str) -> dict[str, str]:
    text = (timm_info_dir() / name).read_text(encoding="utf-8")
    return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)


@cache
def wordnet_lemmas() -> dict[str, str]:
    """wnid -> comma-separated WordNet lemmas, for every ImageNet-21k synset timm knows."""
    return read_tsv("imagenet_synset_to_lemma.txt")


@cache
def wordnet_glosses() -> dict[str, str]:
    """wnid -> WordNet gloss, for every ImageNet-21k synset timm knows."""
    return read_tsv("imagenet_synset_to_definition.txt")


@cache
def imagenet_1k_wnids() -> list[str]:
    """The 1,000 ImageNet-1k wnids in model output order."""
    return (timm_info_dir() / "imagenet_synsets.txt").read_text().split()


def imagenet_a_reference() -> tuple[list[str], list[int]]:
    """timm's ImageNet-A wnids and their ImageNet-1k indices."""
    info = timm_info_dir()
    wnids = (info / "imagenet_a_synsets.txt").read_text().split()
    indices = [int(x) for x in (info / "imagenet_a_indices.txt").read_text().split()]
    return wnids, indices


def describe_synset(wnid: str) -> dict[str, Any]:
    """Name, gloss, lemmas and 1k index of a synset from timm's metadata; refuses unknown wnids."""
    lemmas = wordnet_lemmas().get(wnid)
    if lemmas is None:
        raise CurationError(f"unknown wnid {wnid!r}: not an ImageNet-1k/21k synset (expected e.g. n01498041)")
    one_k = imagenet_1k_wnids()
    lemma_list = [x.strip() for x in lemmas.split(",") if x.strip()]
    return {
        "wnid": wnid,
        "name": lemma_list[0],
        "gloss": wordnet_glosses().get(wnid, ""),
        "lemmas": lemma_list,
        "index_1k": one_k.index(wnid) if wnid in one_k else None,
    }


def read_recipe(path: Path) -> list[dict[str, Any]]:
    """Rows of a class recipe CSV (columns wnid[,index_1k,name,gloss,queries])."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or "wnid" not in reader.fieldnames:
                raise CurationError(f"{path}: a class recipe needs a 'wnid' column")
            rows = list(reader)
    except OSError as exc:
        raise CurationError(f"cannot read class recipe {path}: {exc.strerror}") from None
    recipe = []
    for line, row in enumerate(rows, start=2):
        wnid = (row.get("wnid") or "").strip()
        if not wnid:
            raise CurationError(f"{path}:{line}: empty wnid")
        index = (row.get("index_1k") or "").strip()
        queries = [q.strip() for q in (row.get("queries") or "").split("|") if q.strip()]
        recipe.append(
            {
                "wnid": wnid,
                "index_1k": int(index) if index else None,
                "name": (row.get("name") or "").strip() or None,
                "gloss": (row.get("gloss") or "").strip() or None,
                "queries": queries or None,
            }
        )
    return recipe
