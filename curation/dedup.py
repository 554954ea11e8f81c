"""`curation dedup` (not implemented yet)."""

from __future__ import annotations

import argparse
from typing import Any

from curation.errors import CurationError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dedup", help="dedup stage (not implemented yet)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Any) -> int:
    raise CurationError("`curation dedup` is not implemented yet")
