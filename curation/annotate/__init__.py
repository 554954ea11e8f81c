"""`curation annotate serve|export|import|stats|auto-accept`: people review the images the model got wrong.

``serve`` starts the local review page (see ``app.py``; sessions survive a restart, ``--new-secret``
signs everyone out); ``export``/``import`` move verdicts
as CSV (sha256, wnid, annotator, verdict, note, created_at); ``stats`` prints agreement;
``auto-accept`` accepts the whole queue unseen, for a scripted demo only (not a human review).
Flask is imported only by ``serve``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from curation import options
from curation.annotate.agreement import agreement_stats, summary_line
from curation.annotate.votes import check_annotator, export_csv, import_csv
from curation.catalog import open_catalog
from curation.config import Settings
from curation.errors import CurationError

__all__ = ["agreement_stats", "register", "summary_line"]
MAX_GRID = 100  # the largest grid page: api_v1.MAX_LIMIT, the most one GET /api/v1/next returns


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("annotate", help="review page for people: accept or reject the kept images")
    commands = parser.add_subparsers(dest="annotate_command", metavar="SUBCOMMAND", parser_class=type(parser))
    commands.required = True

    serve = commands.add_parser("serve", help="start the local review web page and print its URL")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument("--token", help="secret every request must carry (default: $CURATION_ANNOTATE_TOKEN)")
    serve.add_argument("--annotator", help="default annotator name for this server")
    serve.add_argument(
        "--new-secret", action="store_true", help="replace the session secret first: signs every annotator out"
    )
    serve.set_defaults(func=run_serve)

    export = commands.add_parser("export", help="write every verdict to a CSV file ('-' for stdout)")
    export.add_argument("file")
    export.set_defaults(func=run_export)

    imp = commands.add_parser("import", help="read verdicts from a CSV file (newer verdicts win)")
    imp.add_argument("file", type=Path)
    imp.set_defaults(func=run_import)

    stats = commands.add_parser("stats", help="agreement: per-class accept rate, pairwise agreement, Fleiss' kappa")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=run_stats)

    auto = commands.add_parser(
        "auto-accept", help="accept every queued pair unseen, for a scripted demo: NOT a human review"
    )
    auto.add_argument(
        "--count-for-release",
        action="store_true",
        help="let these automatic accepts enter a release (a demo; every other release needs a human accept)",
    )
    auto.set_defaults(func=run_auto_accept)


@options.table("annotate")
@dataclass(frozen=True)
class AnnotateOptions:
    """The ``[annotate]`` table."""

    votes_needed: int = 1  # accepting votes a pair needs to enter a release
    crop_fraction: float = 224 / 256  # the review page's centre crop, as the model sees it
    grid_size: int = 48  # thumbnails per grid page: ImageNet's and ImageNetV2's 48-image page
    order: str = "learned"  # "learned" (likely accepts first, with a random share) | "hash" (content-blind)
    consensus: str = "dynamic"  # "dynamic" (votes until the posterior is sure) | "fixed" (votes_needed each)

    def __post_init__(self) -> None:
        if self.votes_needed < 1:
            raise ValueError(f"[annotate] votes_needed must be a positive integer, not {self.votes_needed!r}")
        if self.order not in ("learned", "hash"):
            raise ValueError(f'[annotate] order must be "learned" or "hash", not {self.order!r}')
        if self.consensus not in ("dynamic", "fixed"):
            raise ValueError(f'[annotate] consensus must be "dynamic" or "fixed", not {self.consensus!r}')
        if not 1 <= self.grid_size <= MAX_GRID:
            raise ValueError(
                f"[annotate] grid_size must be a whole number from 1 to {MAX_GRID}, not {self.grid_size!r}"
            )


def votes_needed(settings: Settings) -> int:
    """``[annotate] votes_needed`` (default 1), checked."""
    return options.resolve(AnnotateOptions, settings).votes_needed


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    from curation.annotate.app import ReviewConfig, create_app, is_loopback, make_server, rotate_session_secret
    from curation.store.reader import open_reader

    token = args.token or os.environ.get("CURATION_ANNOTATE_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise CurationError(f"refusing to serve on {args.host} without --token (any non-loopback host needs one)")
    if not 0 <= args.port <= 65535:
        raise CurationError(f"bad port {args.port}: use 0-65535")
    default_annotator = check_annotator(args.annotator) if args.annotator else None
    annotate = options.resolve(AnnotateOptions, settings)
    catalog = open_catalog(settings.db_url)
    if args.new_secret:
        rotate_session_secret(catalog)
        print("annotate: new session secret: every annotator must choose their name again", file=sys.stderr)
    cfg = ReviewConfig(
        catalog=catalog,
        data_dir=settings.data_dir,
        images=open_reader(settings, check=False),
        bind_host=args.host,
        votes_needed=annotate.votes_needed,
        token=token,
        default_annotator=default_annotator,
        crop_fraction=annotate.crop_fraction,
        grid_size=annotate.grid_size,
        order=annotate.order,
        consensus=annotate.consensus,
    )
    if annotate.order == "learned":
        # The learner's import, here before the page's URL is printed rather than inside the request that
        # brings the first votes (0.6 s on a quiet machine, 6-15 s at load 15: a stalled page).
        import sklearn.linear_model  # noqa: F401
    try:
        server = make_server(create_app(cfg), args.host, args.port)
    except OSError as exc:
        raise CurationError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    base, query = f"http://{host}:{server.server_port}/", (f"?token={token}" if token else "")
    print(f"annotate: review page at {base + query} (grid pages: {base}grid{query}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("annotate: stopped; every verdict is already in the catalog", file=sys.stderr)
    finally:
        server.server_close()
    return 0


def run_export(args: argparse.Namespace, settings: Settings) -> int:
    catalog = open_catalog(settings.db_url)
    with catalog.session() as session:
        if args.file == "-":
            n = export_csv(session, sys.stdout)
        else:
            try:
                with open(args.file, "w", newline="", encoding="utf-8") as out:
                    n = export_csv(session, out)
            except OSError as exc:
                raise CurationError(f"cannot write {args.file}: {exc.strerror}") from None
    print(f"annotate: exported {n} verdicts to {args.file}", file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace, settings: Settings) -> int:
    catalog = open_catalog(settings.db_url)
    try:
        with open(args.file, newline="", encoding="utf-8") as source, catalog.session() as session:
            result = import_csv(session, source)
    except FileNotFoundError:
        raise CurationError(f"no such file: {args.file}") from None
    except UnicodeDecodeError:
        raise CurationError(f"{args.file} is not UTF-8 text") from None
    except OSError as exc:
        raise CurationError(f"cannot read {args.file}: {exc.strerror}") from None
    for line in result.rejected[:20]:
        print(f"annotate: rejected {line}", file=sys.stderr)
    if len(result.rejected) > 20:
        print(f"annotate: ... and {len(result.rejected) - 20} more rejected rows", file=sys.stderr)
    print(
        f"annotate: imported {args.file}: {result.added} added, {result.updated} updated, "
        f"{result.unchanged} unchanged, {len(result.rejected)} rejected",
        file=sys.stderr,
    )
    return 0


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    catalog = open_catalog(settings.db_url)
    with catalog.session() as session:
        stats = agreement_stats(session)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False))
        return 0
    print(summary_line(stats))
    if stats["pairs"]:
        print(f"{'annotator pair':<40} {'images':>7} {'agreement':>10}")
        for p in stats["pairs"]:
            print(f"{p['a'] + ' / ' + p['b']:<40} {p['images']:>7} {p['agreement']:>10.3f}")
    if stats["per_class"]:
        print(f"{'wnid':<10} {'class':<28} {'images':>7} {'votes':>7} {'accept rate':>12}")
        for c in stats["per_class"]:
            rate = "n/a" if c["accept_rate"] is None else f"{c['accept_rate']:.3f}"
            print(f"{c['wnid']:<10} {c['name'][:28]:<28} {c['images']:>7} {c['votes']:>7} {rate:>12}")
    return 0


def run_auto_accept(args: argparse.Namespace, settings: Settings) -> int:
    from curation.annotate.auto_accept import AUTO_ACCEPT_ANNOTATOR, auto_accept, count_for_release
    from curation.catalog import accepted_pairs

    needed = votes_needed(settings)
    catalog = open_catalog(settings.db_url)
    with catalog.session() as session:
        added = auto_accept(session)
        if args.count_for_release:
            count_for_release(session)
    with catalog.session() as session:
        accepted = len(accepted_pairs(session, needed))
    counted = (
        "they count toward a release (--count-for-release: a demo)"
        if args.count_for_release
        else "they enter no release without a human accept (--count-for-release for a demo)"
    )
    print(
        f"annotate: auto-accept (NOT a human review): {added} accept votes added as annotator "
        f"{AUTO_ACCEPT_ANNOTATOR!r}; {counted}; {accepted} pairs now accepted (votes_needed={needed}). "
        "For a real dataset, review with `curation annotate serve`.",
        file=sys.stderr,
    )
    return 0
