"""`curation storage check [URL]` runs the preflight from this machine; `curation storage copy SRC_URL
DST_URL` moves an image store, e.g. data/images -> s3://bucket/images.

Resumable and safe to rerun: each image key names its SHA-256, so every object read from the source
is hashed against its key before it is written, and an object already at the destination is read
back and hashed too: the same bytes count as copied, other bytes are refused, never overwritten.
Keys that are not an image's content address (``.catalog-id``) are skipped and counted.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from curation import options
from curation.config import Settings
from curation.errors import CurationError
from curation.store.base import ImageStore, SizeMismatch, sha_of_key
from curation.store.location import StorageOptions, open_images, open_store

# Requests in flight: obstore's put and get rates against SeaweedFS were measured with 16 threads.
WORKERS = 16
WINDOW = 256  # keys handed to the pool at a time (a listing of millions is never all in memory)


def register(subparsers: argparse._SubParsersAction) -> None:
    storage = subparsers.add_parser("storage", help="the image store: check access to it, copy it to another URL")
    commands = storage.add_subparsers(dest="storage_command", metavar="{check,copy}", parser_class=type(storage))
    commands.required = True
    check = commands.add_parser(
        "check", help="write, read back and delete one small object beside the images (the preflight)"
    )
    check.add_argument("url", nargs="?", metavar="URL", help="store to check (default: [storage] images)")
    check.set_defaults(func=run_check)
    copy = commands.add_parser(
        "copy", help="copy every image of one store into another (resumable; SHA-256 checked; never overwrites)"
    )
    copy.add_argument("source", metavar="SRC_URL", help="store to read: a path, file://, s3://, gs:// or az:// URL")
    copy.add_argument("target", metavar="DST_URL", help="store to fill (credentials from the environment)")
    copy.add_argument("--workers", type=int, default=WORKERS, help=f"objects in flight (default {WORKERS})")
    copy.set_defaults(func=run_copy)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    import socket

    from curation.store.preflight import preflight

    store = open_images(settings, {"images": args.url})
    node = socket.gethostname()
    preflight(store, node)
    print(f"storage check: {store.url}: {node} can list, write, read and delete")
    return 0


def run_copy(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    if args.workers < 1:
        raise CurationError(f"--workers must be at least 1, not {args.workers}")
    retry = options.resolve(StorageOptions, settings).retry_seconds
    source, target = open_store(args.source, retry), open_store(args.target, retry)
    if source.url == target.url:
        raise CurationError(f"storage copy: {source.url} is both the source and the destination")
    with tqdm(desc="copy", unit=" obj", disable=None) as progress:
        counts, refused = copy_store(source, target, args.workers, progress.update)
    print(
        f"storage copy: {counts['copied']} copied, {counts['present']} already there, "
        f"{counts['skipped']} other keys skipped, {len(refused)} refused; {source.url} -> {target.url}"
    )
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        print(f"curation: error: storage copy refused {len(refused)} objects: {refused[0]}{more}", file=sys.stderr)
        return 1
    return 0


def copy_store(
    source: ImageStore, target: ImageStore, workers: int = WORKERS, advance: Callable[[int], object] | None = None
) -> tuple[Counter[str], list[str]]:
    """Copy every image key of ``source`` into ``target``; returns the counts (copied, present,
    skipped) and one line per refused object. A store error (server down, access denied) stops it."""
    counts: Counter[str] = Counter()
    refused: list[str] = []
    keys = _image_keys(source, counts)
    with ThreadPoolExecutor(workers) as pool:
        while window := list(itertools.islice(keys, WINDOW)):
            for outcome in pool.map(partial(_copy_one, source, target), window):
                if outcome in ("copied", "present"):
                    counts[outcome] += 1
                else:
                    refused.append(outcome)
                if advance is not None:
                    advance(1)
    return counts, refused


def _image_keys(store: ImageStore, counts: Counter[str]) -> Iterator[str]:
    for key, _ in store.list():
        if sha_of_key(key) is None:
            counts["skipped"] += 1
        else:
            yield key


def _copy_one(source: ImageStore, target: ImageStore, key: str) -> str:
    """ "copied", "present", or the line saying why the object is refused."""
    sha = sha_of_key(key)
    data = source.get(key)
    if hashlib.sha256(data).hexdigest() != sha:
        return f"{source.url}/{key}: its bytes do not hash to the SHA-256 its key names"
    try:
        if target.put_if_absent(key, data):
            return "copied"
    except SizeMismatch as exc:
        return str(exc)
    if hashlib.sha256(target.get(key)).hexdigest() != sha:
        return f"{target.url}/{key}: holds other bytes of the same size; left as it is"
    return "present"
