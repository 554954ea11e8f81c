"""`curation [--config FILE] [--db URL] [--data-dir DIR] COMMAND ...`

Each command lives in its own module, which exposes ``register(subparsers)`` and sets
``func=run(args, settings) -> int`` on its parser. Modules keep heavy imports (torch, timm)
inside ``run`` so that ``--help`` and ``status`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from curation import __version__, options
from curation.config import resolve_settings
from curation.errors import CurationError

# Command modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "curation.init",
    "curation.classes",
    "curation.crawl",
    "curation.filter",
    "curation.dedup",
    "curation.annotate",
    "curation.release",
    "curation.evaluate",
    "curation.report",
    "curation.status",
    "curation.store.cli",
)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="curation",
        description="Rebuild and extend natural adversarial example datasets such as ImageNet-A.",
    )
    parser.add_argument("--version", action="version", version=f"curation {__version__}")
    parser.add_argument("--config", help="config file (default: $CURATION_CONFIG or ./curation.toml)")
    parser.add_argument(
        "--db", help="catalog SQLAlchemy URL or SQLite path (default: $CURATION_DB or db/catalog.sqlite)"
    )
    parser.add_argument("--data-dir", help="where images and releases go (default: $CURATION_DATA_DIR or data/)")
    parser.add_argument(
        "--engine", dest="engine_kind", metavar="KIND", help="execution engine: local (default) or ray ([engine] kind)"
    )
    parser.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="Ray cluster to join: auto (a local `ray start` cluster) or HOST:PORT ([engine] address)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `curation` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_settings(config=args.config, db=args.db, data_dir=args.data_dir)
        options.check_tables(settings.toml, f"config {settings.config_path}")
        settings.engine_flags = {"kind": args.engine_kind, "address": args.ray_address}
        return int(args.func(args, settings) or 0)
    except CurationError as exc:
        print(f"curation: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("curation: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, traceback on request
        if os.environ.get("CURATION_DEBUG"):
            traceback.print_exc()
        print(
            f"curation: internal error: {type(exc).__name__}: {exc} (set CURATION_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1
