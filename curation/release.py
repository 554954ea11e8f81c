"""`curation release` (not implemented yet)."""

from __future__ import annotations

import argparse
from typing import Any

from curation.errors import CurationError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("release", help="release stage (not implemented yet)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Any) -> int:
    raise CurationError("`curation release` is not implemented yet")
