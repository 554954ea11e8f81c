"""`curation release OUT_DIR`: options, the catalog's selection, writing, the record of the release."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from curation import catalog as cat
from curation.annotate import votes_needed as votes_needed_setting
from curation.config import Settings
from curation.errors import CurationError
from curation.release.datasheet import datasheet_context
from curation.release.selection import select_items
from curation.release.upload import is_store_url, open_target, upload_release
from curation.release.writing import write_release
from curation.store.reader import open_reader


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "release", help="write the ImageFolder release, its manifest, datasheet, checksums and tarball"
    )
    parser.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="folder to create (must be empty or absent), or s3://bucket/prefix (gs://, az://) to upload it to",
    )
    parser.add_argument(
        "--name",
        help="dataset folder and archive name (default: the kind's, e.g. imagenet-a-rebuilt, imagenet-o-rebuilt)",
    )
    parser.add_argument("--version", dest="release_version", default="1.0", help="release version (default 1.0)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR (or a finished upload)")
    parser.add_argument("--min-per-class", type=int, default=0, metavar="N", help="leave out classes with fewer")
    parser.add_argument("--max-per-class", type=int, default=None, metavar="N", help="keep at most N per class")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from curation.kinds import catalog_kind

    catalog = cat.open_catalog(settings.db_url)
    with catalog.session() as session:
        kind = catalog_kind(session)
    args.name = args.name or kind.release_name
    _check_args(args)
    images = open_reader(settings)  # an object store is preflighted before any image is read
    target = (
        open_target(args.out_dir, args.name, args.force, images.retry_seconds) if is_store_url(args.out_dir) else None
    )
    if target is None:
        _check_out_dir(Path(args.out_dir), settings, args.force)
    votes_needed = votes_needed_setting(settings)
    with catalog.session() as session:
        selection = select_items(session, votes_needed, args.min_per_class, args.max_per_class)
        if not selection.items:
            raise CurationError(
                f"nothing to release: no image is kept by the filter, unique and accepted (votes_needed={votes_needed})"
            )
        context = datasheet_context(session, settings, selection, votes_needed, args)
    if target is None:
        where = str(Path(args.out_dir).resolve())
        written, failures = write_release(selection.items, Path(args.out_dir), args.name, images, context)
    else:
        where = target.url
        written, failures = _write_and_upload(selection.items, settings.data_dir, args.name, images, target, context)
    _record(catalog, args, where, written, failures, selection, votes_needed, context)
    n_classes = len({i.label for i in written})
    left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(selection.dropped.items())) or "none"
    print(
        f"release {args.name} {args.release_version}: {len(written)} images in {n_classes} classes "
        f"written to {args.out_dir} ({len(failures)} failed; left out: {left_out}); "
        f"archive sha256 {context['archive_sha256']}",
        file=sys.stderr,
    )
    for sha, reason in sorted(failures.items()):
        print(f"  failed {sha[:16]}: {reason}", file=sys.stderr)
    if target is None:
        print(f"  evaluate: {eval_command(kind, Path(args.out_dir) / args.name)}", file=sys.stderr)
    return 0


def _check_args(args: argparse.Namespace) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise CurationError(f"bad --name {args.name!r}: use letters, digits, '.', '_' and '-'")
    if args.min_per_class < 0 or (args.max_per_class is not None and args.max_per_class < 1):
        raise CurationError("--min-per-class must be >= 0 and --max-per-class >= 1")
    if args.max_per_class is not None and args.max_per_class < args.min_per_class:
        raise CurationError("--max-per-class is smaller than --min-per-class")


def _check_out_dir(out_dir: Path, settings: Settings, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CurationError(f"{out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise CurationError(f"{out_dir} is not empty; pass --force to replace it")
    _refuse_precious(out_dir, settings)


def _write_and_upload(
    items: list[Any], data_dir: Path, name: str, images: Any, target: Any, context: dict[str, Any]
) -> tuple[list[Any], dict[str, str]]:
    """Build the release in a temporary folder of the local data dir, upload it, remove the folder."""
    build = Path(data_dir) / f".release-upload-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    try:
        written, failures = write_release(items, build / "out", name, images, context)
        upload_release(build / "out", name, target)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return written, failures


def _record(
    catalog: Any,
    args: argparse.Namespace,
    where: str,
    written: list[Any],
    failures: dict[str, str],
    selection: Any,
    votes_needed: int,
    context: dict[str, Any],
) -> None:
    """The catalog's record of the release and its items."""
    options = {
        "name": args.name,
        "version": args.release_version,
        "votes_needed": votes_needed,
        "min_per_class": args.min_per_class,
        "max_per_class": args.max_per_class,
        "left_out": dict(sorted(selection.dropped.items())),
        "failed": dict(sorted(Counter(failures.values()).items())),
    }
    with catalog.session() as session:
        record = cat.Release(
            name=args.name,
            version=args.release_version,
            out_dir=where,
            n_images=len(written),
            archive_sha256=context["archive_sha256"],
            settings=json.dumps(options, sort_keys=True),
        )
        session.add(record)
        session.flush()
        session.add_all(
            [cat.ReleaseItem(release_id=record.id, sha256=i.sha256, wnid=i.wnid, file=i.file) for i in written]
        )


def eval_command(kind: Any, root: Path) -> str:
    """The `curation eval` line that scores a model on this kind of release with the kind's metrics."""
    if kind.metrics == "ood":
        return f"curation eval {root} --ood --in-dist ID_DIR --model NAME (AUPR, AUROC, FPR95)"
    return f"curation eval {root} --model NAME (restricted top-1, calibration error, AURRA)"


def _refuse_precious(out_dir: Path, settings: Settings) -> None:
    """OUT_DIR is replaced whole: never let it be (or hold) the data dir, the catalog or the current folder."""
    target = out_dir.resolve()
    precious = [("the data directory", settings.data_dir), ("the current folder", Path.cwd())]
    if settings.db_url.startswith("sqlite:///"):
        precious.append(("the catalog", Path(settings.db_url[len("sqlite:///") :])))
    for what, path in precious:
        resolved = path.resolve()
        if resolved == target or target in resolved.parents:
            raise CurationError(f"refusing to write a release to {out_dir}: it holds {what}")
