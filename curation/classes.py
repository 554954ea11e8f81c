"""Classes: the shipped ImageNet-A recipe and user-added synsets (`curation classes`)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import column, delete, select, table
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from curation.catalog import ImageClass, SearchQuery, open_catalog, utcnow
from curation.dialect import insert_ignore
from curation.errors import CurationError
from curation.synsets import QUERY_SEPARATOR, RECIPE_COLUMNS, describe_synset, read_recipe


def class_rows(
    wnid: str,
    name: str | None = None,
    gloss: str | None = None,
    queries: list[str] | None = None,
    index_1k: int | None = None,
    origin: str = "user",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``classes`` row of a synset and its ``search_queries`` rows; missing name, gloss, queries
    and index come from WordNet via timm."""
    info = describe_synset(wnid)
    queries = [q.strip() for q in (queries or info["lemmas"]) if q.strip()]
    if name and name not in queries:
        queries.insert(0, name)
    row = {
        "wnid": wnid,
        "name": name or info["name"],
        "gloss": gloss if gloss is not None else info["gloss"],
        "index_1k": index_1k if index_1k is not None else info["index_1k"],
        "origin": origin,
    }
    seen: set[str] = set()
    query_rows = []
    for position, query in enumerate(queries):
        if query.lower() not in seen:
            seen.add(query.lower())
            query_rows.append({"wnid": wnid, "query": query, "position": position})
    return row, query_rows


def upsert_class(
    session: Session,
    wnid: str,
    name: str | None = None,
    gloss: str | None = None,
    queries: list[str] | None = None,
    index_1k: int | None = None,
    origin: str = "user",
) -> None:
    """Add or update a class; missing name, gloss, queries and index come from WordNet via timm."""
    row, query_rows = class_rows(wnid, name, gloss, queries, index_1k, origin)
    existing = session.get(ImageClass, wnid)
    if existing is None:
        session.add(ImageClass(**row))
    else:
        for key, value in row.items():
            if key != "origin":
                setattr(existing, key, value)
    session.flush()
    session.execute(delete(SearchQuery).where(SearchQuery.wnid == wnid))
    session.add_all(SearchQuery(**q) for q in query_rows)


# The seed writes these columns only (as of migration 0005, which runs it), so that a later migration
# adding a column to these tables (with a server default) does not break seeding a new catalog.
_SEED_CLASSES = table("classes", *map(column, ("wnid", "index_1k", "name", "gloss", "origin", "created_at")))
_SEED_QUERIES = table("search_queries", *map(column, ("wnid", "query", "position")))
_SEED_META = table("catalog_meta", column("key"), column("value"))


def seed_default_classes(bind: Session | Connection) -> int:
    """Load the shipped class recipe into a new catalog (the migration that creates a catalog runs
    it); adds only missing classes, with insert-or-ignore, so concurrent or repeated runs are safe.
    Returns how many classes were new (0 once the catalog says it was seeded)."""
    if bind.scalar(select(_SEED_META.c.value).where(_SEED_META.c.key == "seeded")) is not None:
        return 0
    from curation.kinds import DEFAULT_KIND, KIND_META_KEY, get_kind

    kind = get_kind(bind.scalar(select(_SEED_META.c.value).where(_SEED_META.c.key == KIND_META_KEY)) or DEFAULT_KIND)
    now = utcnow()
    new = 0
    for recipe_row in read_recipe(kind.recipe):  # the catalog's dataset kind's (ImageNet-A by default)
        row, query_rows = class_rows(origin=kind.recipe_origin, **recipe_row)
        added = insert_ignore(bind, _SEED_CLASSES, [{**row, "created_at": now}], count=True)
        if added:
            insert_ignore(bind, _SEED_QUERIES, query_rows)
        new += added
    insert_ignore(bind, _SEED_META, [{"key": "seeded", "value": now.isoformat()}])
    return new


def import_recipe(session: Session, path: Path, origin: str = "imagenet_a") -> int:
    """Add or update every class of a recipe CSV; returns how many classes it held."""
    recipe = read_recipe(path)
    for row in recipe:
        upsert_class(session, origin=origin, **row)
    return len(recipe)


def check_source_class(session: Session, wnid: str, allow_1k_related: bool) -> None:
    """On a catalog whose kind crawls out-of-distribution sources (ImageNet-O), refuse a wnid outside
    the pool with one line naming the related 1k class (unless ``allow_1k_related``, e.g. in tests)."""
    from curation.kinds import catalog_kind

    if catalog_kind(session).source_rule != "ood-pool" or allow_1k_related:
        return
    from curation.kinds.pool import pool_refusal

    reason = pool_refusal(wnid)
    if reason is not None:
        raise CurationError(f"{reason}: ImageNet-O source classes come from the pool (--allow-1k-related overrides)")


def write_pool_recipe(path: Path, size: int, seed: int, exclude_lexnames: list[str]) -> int:
    """A recipe CSV of ``size`` sampled pool synsets (WordNet name, gloss, lemmas); returns its rows."""
    from curation.kinds.pool import sample_pool

    wnids = sample_pool(size, seed, frozenset(x.removeprefix("noun.") for x in exclude_lexnames))
    try:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=RECIPE_COLUMNS, lineterminator="\n")
            writer.writeheader()
            for wnid in wnids:
                info = describe_synset(wnid)
                queries = QUERY_SEPARATOR.join(info["lemmas"])
                writer.writerow(
                    {"wnid": wnid, "index_1k": "", "name": info["name"], "gloss": info["gloss"], "queries": queries}
                )
    except OSError as exc:
        raise CurationError(f"cannot write {path}: {exc.strerror}") from None
    return len(wnids)


# --------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("classes", help="list, add or import classes")
    sub = parser.add_subparsers(dest="classes_command", metavar="{list,add,import,pool-recipe}", required=True)
    listing = sub.add_parser("list", help="print the catalog's classes")
    listing.add_argument("--format", choices=["table", "csv", "json"], default="table")
    add = sub.add_parser("add", help="add an ImageNet-1k/21k synset as a class")
    add.add_argument("wnid")
    add.add_argument("--name", help="display name (default: first WordNet lemma)")
    add.add_argument("--gloss", help="description (default: WordNet gloss)")
    add.add_argument("--query", action="append", help="search query (repeatable; default: WordNet lemmas)")
    imp = sub.add_parser("import", help="add or update the classes of a recipe CSV")
    imp.add_argument("file", type=Path)
    for sub_parser in (add, imp):
        sub_parser.add_argument(
            "--allow-1k-related",
            action="store_true",
            help="ImageNet-O catalogs: accept 1k classes and their WordNet relatives as sources (tests)",
        )
    pool = sub.add_parser("pool-recipe", help="write a recipe of sampled ImageNet-O pool synsets")
    pool.add_argument("file", type=Path, help="recipe CSV to write")
    pool.add_argument("--size", type=int, default=1000, help="synsets to sample (default 1000)")
    pool.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    pool.add_argument(
        "--exclude-lexname", action="append", default=[], metavar="LEX", help="leave out a lexname, e.g. noun.person"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Any) -> int:
    if args.classes_command == "pool-recipe":
        n = write_pool_recipe(args.file, args.size, args.seed, args.exclude_lexname)
        print(f"wrote {n} pool synsets to {args.file}")
        return 0
    catalog = open_catalog(settings.db_url)
    if args.classes_command == "add":
        with catalog.session() as session:
            check_source_class(session, args.wnid, args.allow_1k_related)
            upsert_class(session, args.wnid, name=args.name, gloss=args.gloss, queries=args.query)
        print(f"added {args.wnid}")
        return 0
    if args.classes_command == "import":
        with catalog.session() as session:
            for row in read_recipe(args.file):
                check_source_class(session, row["wnid"], args.allow_1k_related)
            n = import_recipe(session, args.file, origin="user")
        print(f"imported {n} classes from {args.file}")
        return 0
    with catalog.session() as session:
        classes = session.scalars(select(ImageClass).order_by(ImageClass.wnid)).all()
        queries: dict[str, list[str]] = {}
        for q in session.scalars(select(SearchQuery).order_by(SearchQuery.wnid, SearchQuery.position)):
            queries.setdefault(q.wnid, []).append(q.query)
    records = [
        {
            "wnid": c.wnid,
            "index_1k": c.index_1k,
            "name": c.name,
            "gloss": c.gloss,
            "queries": QUERY_SEPARATOR.join(queries.get(c.wnid, [])),
        }
        for c in classes
    ]
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=RECIPE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    elif args.format == "json":
        print(json.dumps(records, indent=1, ensure_ascii=False))
    else:
        for r in records:
            index = "" if r["index_1k"] is None else r["index_1k"]
            print(f"{r['wnid']}  {index!s:>4}  {r['name']}")
        print(f"{len(records)} classes")
    return 0
