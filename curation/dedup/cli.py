"""`curation dedup` and `curation dedup reference ...`: arguments, and the runs they start."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation import options
from curation.dedup.config import (
    DEFAULT_DHASH_MARGIN,
    DEFAULT_MAX_DISTANCES,
    DEFAULT_ORIENTATIONS,
    ORIENTATION_CHOICES,
    DedupOptions,
    embedding_spec,
)
from curation.dedup.stage import run_stage
from curation.errors import CurationError
from curation.store.reader import open_reader

if TYPE_CHECKING:
    from curation.engine import Executor


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dedup",
        help="find near-duplicate images in the crawl and leaks from reference sets",
        description=sys.modules[__package__].__doc__.split("\n\n")[1],  # the package docstring
    )
    parser.add_argument(
        "--max-distance",
        type=int,
        help=f"largest pHash Hamming distance of a near-duplicate (default {DEFAULT_MAX_DISTANCES[2]}, "
        f"{DEFAULT_MAX_DISTANCES[8]} with --orientations 8; dHash may differ by {DEFAULT_DHASH_MARGIN} more)",
    )
    parser.add_argument(
        "--orientations",
        type=int,
        choices=ORIENTATION_CHOICES,
        help="orientations of each image matched: 2 (itself and its mirror) or 8 (also rotated by 90°, 180°, "
        f"270° and flipped upside down) (default {DEFAULT_ORIENTATIONS})",
    )
    parser.add_argument(
        "--against", action="append", default=[], metavar="NAME", help="also check against reference set NAME"
    )
    parser.add_argument("--workers", type=int, help="hashing processes (default: CPU count)")
    parser.add_argument(
        "--matchers",
        type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
        help="comma-separated: hash,embedding (default) or hash (embedding: top-k neighbours by the "
        "[dedup] model, default [filter] model, each proved by ORB + RANSAC verification)",
    )
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(dest="dedup_command", metavar="reference", parser_class=type(parser))
    reference = commands.add_parser("reference", help="manage reference sets (ImageNet train/val, any folder)")
    actions = reference.add_subparsers(dest="reference_command", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    add = actions.add_parser("add", help="hash a folder or list of images (resumable) or import a hash file")
    add.add_argument("name")
    add.add_argument(
        "path", help="a folder of images (any depth), a text file listing image paths, or an exported .npz hash file"
    )
    add.add_argument("--workers", type=int, help="hashing processes (default: CPU count)")
    add.add_argument("--chunk-size", type=int, default=2000, help="images per resumable chunk file")
    imp = actions.add_parser("import", help="register an exported .npz hash file")
    imp.add_argument("name")
    imp.add_argument("path")
    exp = actions.add_parser("export", help="write a reference set's hash file")
    exp.add_argument("name")
    exp.add_argument("path", help="target .npz file")
    actions.add_parser("list", help="list reference sets")
    for sub in (add, imp, exp):
        sub.set_defaults(func=run_reference)
    actions.choices["list"].set_defaults(func=run_reference)


def run_reference(args: argparse.Namespace, settings: Any) -> int:
    """`curation dedup reference add|import|export|list`."""
    from curation import reference_sets
    from curation.catalog import open_catalog

    action = args.reference_command
    if action == "add" and Path(args.path).suffix != ".npz":
        if args.chunk_size < 1:
            raise CurationError("--chunk-size must be at least 1")
        from curation.engine import open_executor

        with open_executor(settings, settings.data_dir) as executor:  # first: a cluster problem writes nothing
            return _add_reference_folder(args, settings, executor)
    catalog = open_catalog(settings.db_url)
    if action == "list":
        rows = reference_sets.list_sets(catalog)
        if not rows:
            print("no reference sets; add one with `curation dedup reference add NAME FOLDER`")
        for row in rows:
            state = "complete" if row.complete else "incomplete"
            print(f"{row.name}\t{row.count}\t{state}\t{row.root or '(imported)'}\t{row.hash_file}")
        return 0
    path = Path(args.path)
    from curation.dedup.ref_embed import export_embeddings, import_embeddings

    if action == "export":
        n = reference_sets.export_file(catalog, settings.data_dir, args.name, path)
        label = export_embeddings(catalog, settings.data_dir, args.name, path)
        carried = f" with the embeddings and index of {label}" if label else " (no embeddings to carry)"
        print(f"reference export: {args.name}: {n} hashes written to {path}{carried}")
        return 0
    n = reference_sets.import_file(catalog, settings.data_dir, args.name, path)  # import, or add FILE.npz
    label = import_embeddings(catalog, settings.data_dir, args.name, path, n)
    carried = f" with the embeddings and index of {label}" if label else ""
    print(f"reference import: {args.name}: {n} hashes from {path}{carried}")
    return 0


def _add_reference_folder(args: argparse.Namespace, settings: Any, executor: Executor) -> int:
    """`curation dedup reference add NAME FOLDER|LIST`: hashing on ``executor``."""
    from curation import reference_sets
    from curation.catalog import open_catalog

    summary = reference_sets.add_folder(
        open_catalog(settings.db_url),
        settings.data_dir,
        args.name,
        Path(args.path),
        workers=options.resolve(DedupOptions, settings, {"workers": args.workers}).processes,
        chunk_size=args.chunk_size,
        executor=executor,
    )
    failed_note = ""
    if summary.failed:
        failed_list = reference_sets.set_dir(settings.data_dir, summary.name) / "failed.tsv"
        failed_note = f", listed with reasons in {failed_list}"
    print(
        f"reference add: {summary.name}: {summary.total} hashes ({summary.hashed_now} hashed now, "
        f"{summary.resumed_from} already done, {summary.failed} unreadable{failed_note})"
    )
    _embed_reference(args.name, settings, executor)
    return 0


def _embed_reference(name: str, settings: Any, executor: Executor) -> None:
    """Embed the set with dedup's embedding model (resumably: only items without a vector get a
    forward) and build its index; one line, or one line saying why not."""
    from curation.catalog import open_catalog
    from curation.dedup.matchers import open_embedding
    from curation.dedup.ref_embed import embed_reference

    catalog = open_catalog(settings.db_url)
    opts = options.resolve(DedupOptions, settings)
    matcher = open_embedding(catalog, settings.data_dir, embedding_spec(settings, opts), executor, opts.processes)
    if matcher is None:
        return
    total, now, failed = embed_reference(catalog, settings.data_dir, name, matcher.embedder, executor)
    print(
        f"reference add: {name}: {total} items embedded with {matcher.embedder.label} ({now} now, "
        f"{failed} unreadable for the model) and indexed"
    )


def run(args: argparse.Namespace, settings: Any) -> int:
    """`curation dedup [--max-distance N] [--orientations 2|8] [--against NAME ...]`."""
    from curation.catalog import open_catalog
    from curation.engine import open_executor

    opts = options.resolve(DedupOptions, settings, args)
    with open_executor(settings, settings.data_dir) as executor:
        images = open_reader(settings, cluster=executor)  # an object store: preflighted here and on each node
        catalog = open_catalog(settings.db_url)
        summary = run_stage(
            catalog,
            settings.data_dir,
            opts.distance,
            opts.dhash_margin,
            list(dict.fromkeys(opts.against)),
            opts.processes,
            opts.orientations,
            executor,
            images,
            embedding=embedding_spec(settings, opts),
        )
    print(summary.line())
    print(summary.funnel())
    return 0
