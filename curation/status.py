"""Catalog-wide commands: `status` (the per-class funnel), `export` and `db`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from curation.catalog import (
    current_revision,
    database_error,
    export_table,
    funnel,
    head_revision,
    make_engine,
    open_catalog,
    table_names,
    upgrade,
)
from curation.config import Settings
from curation.errors import CurationError

FUNNEL_COLUMNS = ("candidates", "downloaded", "failed", "kept", "unique", "accepted", "released")


def register(subparsers: argparse._SubParsersAction) -> None:
    status = subparsers.add_parser("status", help="per-class funnel: candidates to released")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=run_status)

    export = subparsers.add_parser("export", help="export a catalog table as CSV or JSON lines")
    export.add_argument("table", choices=table_names(), metavar="TABLE", help=", ".join(table_names()))
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    export.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    export.set_defaults(func=run_export)

    db = subparsers.add_parser("db", help="catalog schema (show, upgrade) and moving a catalog (copy)")
    db_commands = db.add_subparsers(dest="db_command", metavar="{current,upgrade,copy}", parser_class=type(db))
    db_commands.required = True
    db_commands.add_parser("current", help="print the catalog's schema revision").set_defaults(func=run_db)
    db_commands.add_parser("upgrade", help="migrate the catalog to this code's schema").set_defaults(func=run_db)
    copy = db_commands.add_parser(
        "copy", help="copy every row of one catalog into a new, empty one (e.g. SQLite -> PostgreSQL)"
    )
    copy.add_argument("source", metavar="SOURCE_URL", help="catalog to read (SQLAlchemy URL or SQLite path)")
    copy.add_argument("target", metavar="TARGET_URL", help="empty database to fill (SQLAlchemy URL or SQLite path)")
    copy.set_defaults(func=run_db_copy)


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    from curation.annotate import agreement_stats, summary_line, votes_needed
    from curation.annotate.progress import progress_line, review_progress
    from curation.kinds import catalog_kind

    catalog = open_catalog(settings.db_url)
    with catalog.session() as session:
        kind = catalog_kind(session)
        if kind.funnel_by == "prediction":
            return print_target_funnel(session, kind, votes_needed(settings), args.json)
        rows = funnel(session, votes_needed(settings))
        agreement = agreement_stats(session)
        review = review_progress(session)
    totals = {c: sum(r[c] for r in rows) for c in FUNNEL_COLUMNS}
    if args.json:
        out = {"classes": rows, "totals": totals, "agreement": agreement, "review": review}
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print_funnel(rows, totals)
    print(summary_line(agreement))
    print(progress_line(review))
    return 0


def print_funnel(rows: list[dict[str, Any]], totals: dict[str, int]) -> None:
    name_width = min(28, max([len(r["name"]) for r in rows] + [5]))
    header = f"{'wnid':<10} {'class':<{name_width}} " + " ".join(f"{c:>10}" for c in FUNNEL_COLUMNS)
    print(header)
    for r in rows:
        print(
            f"{r['wnid']:<10} {r['name'][:name_width]:<{name_width}} " + " ".join(f"{r[c]:>10}" for c in FUNNEL_COLUMNS)
        )
    print(f"{'total':<10} {len(rows):<{name_width}} " + " ".join(f"{totals[c]:>10}" for c in FUNNEL_COLUMNS))


def target_names(session: Any, kind: Any) -> list[tuple[str, str]]:
    """(wnid, name) of the kind's targets (its recipe), names from the catalog, in wnid order."""
    from sqlalchemy import select

    from curation.catalog import ImageClass
    from curation.synsets import read_recipe

    wnids = {row["wnid"] for row in read_recipe(kind.recipe)}
    names = dict(session.execute(select(ImageClass.wnid, ImageClass.name).where(ImageClass.wnid.in_(wnids))).all())
    return [(wnid, names.get(wnid, wnid)) for wnid in sorted(wnids)]


def print_target_funnel(session: Any, kind: Any, votes: int, as_json: bool) -> int:
    """The funnel of an out-of-distribution kind: crawl totals over the source classes, then per target
    folder the pairs kept, unique, accepted and released."""
    from curation.annotate import agreement_stats, summary_line
    from curation.annotate.progress import progress_line, review_progress
    from curation.kinds.by_target import TARGET_COLUMNS, funnel_by_target

    data = funnel_by_target(session, target_names(session, kind), votes)
    totals = {c: sum(r[c] for r in data["targets"]) for c in TARGET_COLUMNS}
    agreement, review = agreement_stats(session), review_progress(session)
    if as_json:
        out = {"kind": kind.name, **data, "totals": totals, "agreement": agreement, "review": review}
        print(json.dumps(out, ensure_ascii=False))
        return 0
    src = data["sources"]
    print(
        f"{kind.title}: {src['classes']} source classes, {src['candidates']} candidates, {src['downloaded']} "
        f"downloaded, {src['failed']} failed; by target folder (the 1k class the model confuses them with):"
    )
    shown = [r for r in data["targets"] if r["kept"]]
    name_width = min(28, max([len(r["name"]) for r in shown] + [5]))
    print(f"{'target':<10} {'class':<{name_width}} " + " ".join(f"{c:>10}" for c in TARGET_COLUMNS))
    for r in shown:
        print(
            f"{r['wnid']:<10} {r['name'][:name_width]:<{name_width}} " + " ".join(f"{r[c]:>10}" for c in TARGET_COLUMNS)
        )
    label = f"{len(shown)} of {len(data['targets'])}"
    print(f"{'total':<10} {label:<{name_width}} " + " ".join(f"{totals[c]:>10}" for c in TARGET_COLUMNS))
    print(summary_line(agreement))
    print(progress_line(review))
    return 0


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    catalog = open_catalog(settings.db_url)
    if args.output is None:
        n = export_table(catalog, args.table, args.format, sys.stdout)
    else:
        try:
            with open(args.output, "w", newline="", encoding="utf-8") as out:
                n = export_table(catalog, args.table, args.format, out)
        except OSError as exc:
            raise CurationError(f"cannot write {args.output}: {exc.strerror}") from None
        print(f"exported {n} rows of {args.table} to {args.output}", file=sys.stderr)
    return 0


def run_db(args: argparse.Namespace, settings: Settings) -> int:
    engine = make_engine(settings.db_url)
    try:
        if args.db_command == "upgrade":
            upgrade(engine)
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        raise database_error(engine, exc) from None
    print(f"catalog schema {revision} (code expects {head_revision()})")
    return 0


def run_db_copy(args: argparse.Namespace, settings: Settings) -> int:
    from curation.dbcopy import copy_catalog

    as_url = lambda text: text if "://" in text else f"sqlite:///{text}"  # noqa: E731 - as for --db
    result = copy_catalog(as_url(args.source), as_url(args.target))
    print(
        f"db copy: {result.rows} rows in {result.tables} tables copied, every count checked, in {result.seconds:.1f} s"
    )
    return 0
