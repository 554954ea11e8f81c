"""`curation dedup`: near-duplicates inside the crawl and leaks from reference sets.

Every downloaded image is hashed once (pHash and dHash of the image and of its mirror image, and
with ``--orientations 8`` also of its rotations by 90°, 180° and 270° and their mirrors,
:mod:`curation.hashing`). Two images are near-duplicates when, in one orientation of one of them,
their pHashes differ in at most ``max_distance`` bits and their dHashes in at most ``max_distance +
dhash_margin`` bits; the defaults (2 orientations, 10 and 4; 8 and 4 with 8 orientations) come from
``benchmarks/dedup_thresholds.py``. Pairs are found with a multi-index-hashing range search
(:mod:`curation.hamming_index`), never all pairs. Near-duplicates form clusters (union-find); in
each, one representative survives: the largest resolution, then the most open licence, then the
earliest found. The others are marked ``duplicate`` of it. A cluster whose images were found for
different classes is flagged ``label_conflict``. With ``--against NAME`` every image is also
checked against a reference set; a match marks its whole cluster ``leaked``.

Subcommands manage reference sets: ``reference add NAME PATH`` (a folder or a text list of
images, hashed in parallel and resumably, or a hash file), ``reference import NAME FILE``, ``reference export NAME FILE``,
``reference list``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from curation import options
from curation.errors import CurationError

if TYPE_CHECKING:
    import numpy as np

    from curation.catalog import Catalog
    from curation.engine import Executor

DEFAULT_ORIENTATIONS = 2
# The loosest pHash distance with no false pair among 30.4 M pairs of distinct photos
# (benchmarks/dedup_thresholds.py): 10 matching each image as itself and its mirror; 8 in all 8
# orientations, where 10 merges 4 pairs of distinct photos.
DEFAULT_MAX_DISTANCES = {2: 10, 8: 8}
DEFAULT_MAX_DISTANCE = DEFAULT_MAX_DISTANCES[DEFAULT_ORIENTATIONS]
DEFAULT_DHASH_MARGIN = 4
ORIENTATION_CHOICES = (2, 8)
MAX_ALLOWED_DISTANCE = 16
HASH_BATCH = 500  # rows per transaction
HASH_CHUNK = 16  # images per task: 16 x ~5 ms hashing outweighs a task's scheduling cost
# Images read and hashed per page. All at once, 1 M images held ~0.8 GB in the driver, copied into
# each forked worker: 2.7 GiB for the process tree (benchmarks/scale.py, tail shape).
HASH_PAGE = 20_000

# Licence openness, most open first: public domain, attribution, share-alike, then restrictions.
_LICENCE_RANKS = (
    (re.compile(r"\b(cc0|pdm|public[- ]?domain|publicdomain|no known copyright)\b"), 0),
    (re.compile(r"\bby[- ]nc[- ]nd\b|\bnc[- ]nd\b"), 6),
    (re.compile(r"\bby[- ]nc[- ]sa\b|\bnc[- ]sa\b"), 5),
    (re.compile(r"\bby[- ]nc\b|\bnc\b"), 4),
    (re.compile(r"\bby[- ]nd\b|\bnd\b"), 3),
    (re.compile(r"\bby[- ]sa\b|\bsa\b"), 2),
    (re.compile(r"\bby\b|attribution"), 1),
)
UNKNOWN_LICENCE_RANK = 7


def licence_rank(licence: str | None) -> int:
    """0 for public domain / CC0 up to 6 for CC BY-NC-ND; 7 for unknown or all rights reserved."""
    if not licence:
        return UNKNOWN_LICENCE_RANK
    text = licence.lower().replace("_", "-")
    for pattern, rank in _LICENCE_RANKS:
        if pattern.search(text):
            return rank
    return UNKNOWN_LICENCE_RANK


@options.table("dedup")
@dataclass(frozen=True)
class DedupOptions:
    """The ``[dedup]`` table; flags of the same name win."""

    workers: int | None = None  # hashing processes (None: the CPU count)
    orientations: int = DEFAULT_ORIENTATIONS
    max_distance: int | None = None  # None: DEFAULT_MAX_DISTANCES[orientations]
    dhash_margin: int = DEFAULT_DHASH_MARGIN
    against: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.orientations not in ORIENTATION_CHOICES:
            raise ValueError(f"[dedup] orientations must be 2 or 8, got {self.orientations!r}")
        if self.max_distance is not None and not 0 <= self.max_distance <= MAX_ALLOWED_DISTANCE:
            raise ValueError(f"--max-distance must be between 0 and {MAX_ALLOWED_DISTANCE}, got {self.max_distance}")
        if self.workers is not None and self.workers < 1:
            raise ValueError("--workers must be at least 1")

    @property
    def distance(self) -> int:
        """The pHash threshold in force."""
        return DEFAULT_MAX_DISTANCES[self.orientations] if self.max_distance is None else self.max_distance

    @property
    def processes(self) -> int:
        return self.workers or os.cpu_count() or 1


# --------------------------------------------------------------------------- CLI


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dedup",
        help="find near-duplicate images in the crawl and leaks from reference sets",
        description=__doc__.split("\n\n")[1],
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
    if action == "export":
        n = reference_sets.export_file(catalog, settings.data_dir, args.name, path)
        print(f"reference export: {args.name}: {n} hashes written to {path}")
        return 0
    n = reference_sets.import_file(catalog, settings.data_dir, args.name, path)  # import, or add FILE.npz
    print(f"reference import: {args.name}: {n} hashes from {path}")
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
    return 0


def run(args: argparse.Namespace, settings: Any) -> int:
    """`curation dedup [--max-distance N] [--orientations 2|8] [--against NAME ...]`."""
    from curation.catalog import open_catalog
    from curation.engine import open_executor

    opts = options.resolve(DedupOptions, settings, args)
    with open_executor(settings, settings.data_dir) as executor:
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
        )
    print(summary.line())
    print(summary.funnel())
    return 0


# --------------------------------------------------------------------------- the stage


@dataclass
class Summary:
    images: int = 0
    hashed_now: int = 0
    rehashed: int = 0
    failed: int = 0
    clusters: int = 0
    representatives: int = 0
    duplicates: int = 0
    leaked: int = 0
    label_conflicts: int = 0
    leaked_representatives: int = 0
    against: list[str] = field(default_factory=list)
    rule: str = ""  # the match rule in force, e.g. "pHash <= 10, dHash <= 14, 2 orientations"

    def line(self) -> str:
        refs = f" (against {', '.join(self.against)})" if self.against else ""
        rehashed = f"{self.rehashed} given rotated hashes, " if self.rehashed else ""
        return (
            f"dedup: {self.images} images, {self.hashed_now} hashed now, {rehashed}{self.failed} unreadable; "
            f"{self.clusters} near-duplicate clusters, {self.representatives} representatives, "
            f"{self.duplicates} duplicates, {self.leaked} leaked{refs}, {self.label_conflicts} in label conflicts"
            + (f" ({self.rule})" if self.rule else "")
        )

    def funnel(self) -> str:
        hashed = self.images - self.failed
        unique = self.representatives + self.leaked_representatives
        return (
            f"funnel: {self.images} downloaded -> {hashed} hashed -> {unique} unique -> "
            f"{self.representatives} unique and not leaked"
        )


class HashTask:
    """Hashes a batch of (sha256, absolute path) on a worker: (sha256, hashes, None) or (sha256,
    None, reason) per image."""

    resource = "cpu"

    def __init__(self, orientations: int) -> None:
        self.orientations = orientations

    def setup(self) -> None:
        pass

    def run(self, batch: list[tuple[str, str]]) -> list[tuple[str, Any, str | None]]:
        from curation.hashing import hash_file

        records: list[tuple[str, Any, str | None]] = []
        for sha, path in batch:
            try:
                records.append((sha, hash_file(path, orientations=self.orientations), None))
            except FileNotFoundError:
                records.append((sha, None, f"file missing: {path}"))
            except Exception as exc:  # noqa: BLE001 - any undecodable file is a per-image failure
                records.append((sha, None, f"{type(exc).__name__}: {exc}"))
        return records


def _hash_new_images(
    catalog: Catalog, data_dir: Path, workers: int, orientations: int, executor: Executor
) -> tuple[int, int, dict[str, str]]:
    """Hash every image without hashes in ``orientations`` orientations; with 8, also add the rotated
    ones to rows hashed without them (with 2, or before revision 0004). Returns (hashed now, rows
    completed, {sha: reason} of failures); a row that cannot be read again keeps its hashes and is
    not a failure. The images are read and hashed a page at a time, in sha256 order."""
    from tqdm import tqdm

    hashed = completed = 0
    failures: dict[str, str] = {}
    page = _unhashed_page(catalog, orientations, "")
    total = len(page) if len(page) < HASH_PAGE else _unhashed_count(catalog, orientations)
    with tqdm(total=total, desc="hashing", unit="img", file=sys.stderr, disable=not total) as bar:
        while page:
            page_hashed, page_completed = _hash_page(catalog, data_dir, page, workers, orientations, executor, failures)
            hashed, completed = hashed + page_hashed, completed + page_completed
            bar.update(len(page))
            page = _unhashed_page(catalog, orientations, page[-1][0])
    return hashed, completed, failures


def _missing_column(orientations: int) -> Any:
    """The hash column that is NULL (or whose row is absent) for an image still to hash."""
    from curation.catalog import PerceptualHash

    return PerceptualHash.sha256 if orientations == 2 else PerceptualHash.orientation_hashes


def _unhashed_count(catalog: Catalog, orientations: int) -> int:
    """How many images are still to hash, for the progress bar of a run with more than a page: two
    counts, not an anti-join over every image."""
    from sqlalchemy import func, select

    from curation.catalog import Image, PerceptualHash

    hashed = select(func.count()).select_from(PerceptualHash)
    if orientations != 2:
        hashed = hashed.where(PerceptualHash.orientation_hashes.is_not(None))
    with catalog.session() as session:
        images = session.scalar(select(func.count()).select_from(Image))
        return max(0, images - session.scalar(hashed))


def _unhashed_page(catalog: Catalog, orientations: int, after: str) -> list[Any]:
    """The next :data:`HASH_PAGE` images to hash after sha256 ``after``: (sha256, path, has a hash row)."""
    from sqlalchemy import select

    from curation.catalog import Image, PerceptualHash

    with catalog.session() as session:
        return session.execute(
            select(Image.sha256, Image.path, PerceptualHash.sha256.is_not(None))
            .outerjoin(PerceptualHash, PerceptualHash.sha256 == Image.sha256)
            .where(_missing_column(orientations).is_(None), Image.sha256 > after)
            .order_by(Image.sha256)
            .limit(HASH_PAGE)
        ).all()


def _hash_page(
    catalog: Catalog,
    data_dir: Path,
    page: list[Any],
    workers: int,
    orientations: int,
    executor: Executor,
    failures: dict[str, str],
) -> tuple[int, int]:
    """Hash one page of images and write their rows; failures of images without a row go into
    ``failures``. Returns (hashed now, rows completed)."""
    from sqlalchemy import insert, update

    from curation.catalog import PerceptualHash
    from curation.engine import Sink
    from curation.hashing import pack_extra, to_signed

    has_row = {sha: bool(known) for sha, _, known in page}

    def write(records: list[tuple[str, Any]]) -> None:
        new_rows = [
            {
                "sha256": sha,
                "phash": to_signed(hashes.phash),
                "dhash": to_signed(hashes.dhash),
                "phash_mirror": to_signed(hashes.phash_mirror),
                "dhash_mirror": to_signed(hashes.dhash_mirror),
                "orientation_hashes": pack_extra(hashes.extra) if hashes.extra else None,
            }
            for sha, hashes in records
            if not has_row[sha]
        ]
        # Rows hashed before get only the new orientations: their hashes (and statuses) stay.
        completed_rows = [
            {"sha256": sha, "orientation_hashes": pack_extra(hashes.extra)} for sha, hashes in records if has_row[sha]
        ]
        with catalog.session() as session:
            if new_rows:
                session.execute(insert(PerceptualHash), new_rows)
            if completed_rows:
                session.execute(update(PerceptualHash), completed_rows)

    items = [(sha, str((data_dir / path).absolute())) for sha, path, _ in page]
    hashed = completed = 0
    with Sink(write, key=lambda record: record[0], rows=HASH_BATCH) as sink:
        for sha, hashes, error in executor.map(HashTask(orientations), items, batch_size=HASH_CHUNK, workers=workers):
            if error is not None:
                if not has_row[sha]:
                    failures[sha] = error
                continue
            if sink.add((sha, hashes)):  # False: a batch that ran twice (its worker died)
                completed += has_row[sha]
                hashed += not has_row[sha]
    return hashed, completed


LOAD_BLOCK = 10_000  # hash rows read and turned into arrays at a time
RULE_META = "dedup:rule"  # the match rule the stored clusters were made with
# The reference sets every clustered image has been checked against, and what they were then.
REFERENCES_META = "dedup:references"
NEW_ONLY = object()  # _load_table's subset: the images new to dedup
# Images whose statuses are decided, compared with the catalog and written in one transaction. Each
# commit writes every index page it dirtied, and a batch of random sha256 keys dirties about one page
# per row: a full dedup of 1 M synthetic stress rows took 114 s with 5,000 and 75 s with 50,000
# (100k: 7.1 and 5.8 s; peak RSS +70 MiB at 100k, none at 1 M).
STATUS_BATCH = 50_000


@dataclass
class _Table:
    """Hashed images in sha256 order (an image's id is its row): hashes of the queried orientations,
    whether it is new to dedup (not clustered yet), the row of its stored cluster's representative,
    and how often the crawl had found it again when it was read."""

    shas: np.ndarray  # S64: hex sha256
    hashes: np.ndarray  # (n, 2 * orientations) uint64
    new: np.ndarray  # bool: not clustered yet
    stored_cluster: np.ndarray  # int64 row, -1 when none
    refound: np.ndarray  # int64: perceptual_hashes.refound as read

    def rows(self, shas: Any) -> np.ndarray:
        """The row of each hex sha256 (str or bytes), -1 for those not in the table."""
        import numpy as np

        wanted = np.array(shas, dtype="S64")
        if not len(self.shas):
            return np.full(len(wanted), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.shas, wanted), len(self.shas) - 1).astype(np.int64)
        return np.where(self.shas[at] == wanted, at, -1)


def run_stage(
    catalog: Catalog,
    data_dir: Path,
    max_distance: int,
    margin: int,
    against: list[str],
    workers: int,
    orientations: int = DEFAULT_ORIENTATIONS,
    executor: Executor | None = None,
) -> Summary:
    """Hash new images, cluster near-duplicates (each image queried in ``orientations`` orientations,
    2 or 8), check reference sets, and write the statuses and links that changed. With the rule of
    the stored clusters, nothing rehashed and every reference set checked before, only the new
    images are searched in the stored index (:mod:`curation.dedup_index`) and only the clusters they
    hit are read and rewritten; otherwise every image is read (and the index rebuilt)."""
    from curation import reference_sets
    from curation.catalog import Meta
    from curation.dedup_index import StoredIndex
    from curation.dialect import catalog_lock

    references = {name: reference_sets.load(catalog, data_dir, name) for name in against}  # fail before work
    if orientations not in ORIENTATION_CHOICES:
        raise CurationError(f"orientations must be 2 or 8, got {orientations!r}")
    if executor is None:
        from curation.engine.local import LocalExecutor

        executor = LocalExecutor()
    hashed_now, rehashed, failures = _hash_new_images(catalog, data_dir, workers, orientations, executor)
    rule = f"pHash <= {max_distance}, dHash <= {max_distance + margin}, {orientations} orientations"
    match = _Match(max_distance, margin, orientations, rule)
    with catalog_lock(catalog.engine, "dedup"):  # one run at a time owns the stored index
        with catalog.session() as session:
            stored = session.get(Meta, RULE_META)
            full = rehashed > 0 or stored is None or stored.value != rule
        checked, signatures = _reference_signatures(catalog, rule, against)
        unchecked = {name: ref for name, ref in references.items() if checked.get(name) != signatures[name]}
        columns = 2 * orientations
        index = None if full or unchecked else StoredIndex.open(catalog, data_dir, rule, max_distance, columns)
        if index is not None:
            clustered = _cluster_new(catalog, index, references, match)
        else:
            clustered = _cluster_everything(catalog, data_dir, references, unchecked, match, full)
        failed = {sha: _status_row(sha, "failed", reason=reason) for sha, reason in failures.items()}
        _write_changes(catalog, failed, {})
        with catalog.session() as session:
            session.merge(Meta(key=RULE_META, value=rule))
            kept = {} if clustered or full else checked  # images clustered without a set are checked again
            session.merge(Meta(key=REFERENCES_META, value=json.dumps({**kept, **signatures}, sort_keys=True)))
    summary = _summarise(catalog)
    summary.hashed_now, summary.rehashed, summary.failed = hashed_now, rehashed, len(failures)
    summary.against, summary.rule = list(against), rule
    return summary


@dataclass(frozen=True)
class _Match:
    """The match rule in force."""

    max_distance: int
    margin: int
    orientations: int
    rule: str


def _reference_signatures(catalog: Catalog, rule: str, names: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The reference sets every clustered image was checked against, as they were then (hash file,
    size, time and the rule), and what the sets ``names`` are now."""
    from curation.catalog import Meta, ReferenceSet

    with catalog.session() as session:
        stored = session.get(Meta, REFERENCES_META)
        try:
            checked = {str(k): str(v) for k, v in json.loads(stored.value).items()} if stored else {}
        except (ValueError, AttributeError):
            checked = {}
        signatures = {}
        for name in names:
            row = session.get(ReferenceSet, name)
            signatures[name] = f"{rule}|{row.hash_file}|{row.count}|{row.updated_at}" if row else ""
    return checked, signatures


def _cluster_new(catalog: Catalog, index: Any, references: dict[str, Any], match: _Match) -> bool:
    """The rerun: search the new images in the stored index and merge them into the stored clusters
    they hit, reading each hit cluster's representative only (its survivor, and the cluster's
    leaked and label-conflict flags, stand for all its members). A stored cluster of several is read
    whole only when its representative loses: to a new image, or to another cluster's. Returns
    whether there were new images."""
    import numpy as np

    new = _load_table(catalog, match.orientations, full=False, subset=NEW_ONLY)
    if not len(new.shas):
        return False
    query_rows, hit_shas = _index_hits(index, new, match)
    stored = _stored_clusters(catalog, np.unique(hit_shas))
    keys = np.array([stored[sha].key for sha in hit_shas.tolist()], dtype="S64")

    def merge(members: set[str], checked_now: dict[str, Any]) -> tuple[Any, ...]:
        """Read the new images, the hit representatives and ``members``; cluster them and decide."""
        table = _load_table(catalog, match.orientations, full=False, subset=_subset(new.shas, stored, members))
        links = (table.rows(new.shas[query_rows]), table.rows(keys))
        roots = _cluster(table, match.max_distance, match.margin, full=False, links=links)
        leaked = _check_references(catalog, table, checked_now, match, np.flatnonzero(table.new))
        return table, roots, leaked, _StoredFlags.of(table, stored), *_survivors(catalog, table, roots)

    table, roots, leaked, flags, survivors, conflicted = merge(set(), references)
    losing = flags.losing_clusters(table, roots, survivors)
    if losing:  # read those clusters whole: every member's link and cluster id change
        table, roots, leaked, flags, survivors, conflicted = merge(_cluster_members(catalog, losing), {})
    leaked |= flags.leaked
    index.add(new.shas, new.hashes)
    index.commit(catalog)  # before the statuses: every image with a status is in the index
    conflicted |= {int(root) for root in roots[flags.conflict]}
    _spread_flags(catalog, table, (roots, leaked, conflicted), survivors, flags)
    _write_clusters(catalog, table, roots, np.ones(len(table.shas), bool), leaked, flags.conflict)
    _mark_clustered(catalog, new, new.new)
    return True


def _index_hits(index: Any, new: _Table, match: _Match) -> tuple[np.ndarray, np.ndarray]:
    """(row of the new image, sha256 of the indexed image) of every match in the stored index."""
    import numpy as np

    found = list(index.hits(new.hashes, match.max_distance, match.margin))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, "S64")
    return np.concatenate([q for q, _ in found]).astype(np.int64), np.concatenate([s for _, s in found])


def _subset(new_shas: np.ndarray, stored: dict[bytes, _Stored], members: set[str]) -> list[str]:
    """The images a rerun reads: the new ones, the representative of every hit cluster, ``members``."""
    keys = {info.key.decode() for info in stored.values()}
    return sorted(keys | members | set(new_shas.astype(str)))


@dataclass(frozen=True)
class _Stored:
    """What the stored status of an indexed image says about its cluster."""

    key: bytes  # the representative's sha256 (the image itself when alone)
    several: bool
    leaked: bool
    conflict: bool


def _stored_clusters(catalog: Catalog, shas: np.ndarray) -> dict[bytes, _Stored]:
    """The stored cluster of each of these images, by the primary key of ``dedup_status`` (an image
    without a status, left by a crash before its statuses were written, is alone)."""
    from sqlalchemy import select

    from curation.catalog import LEAKED, DedupStatus

    stored = {sha: _Stored(sha, False, False, False) for sha in shas.tolist()}
    columns = (DedupStatus.sha256, DedupStatus.cluster_id, DedupStatus.status, DedupStatus.label_conflict)
    with catalog.session() as session:
        for part in _chunks([sha.decode() for sha in shas.tolist()]):
            for sha, cluster, status, conflict in session.execute(select(*columns).where(DedupStatus.sha256.in_(part))):
                key = (cluster or sha).encode()
                stored[sha.encode()] = _Stored(key, cluster is not None, status == LEAKED, bool(conflict))
    return stored


@dataclass
class _StoredFlags:
    """Per table row, for the representatives of stored clusters: the stored cluster's flags."""

    leaked: np.ndarray  # bool
    conflict: np.ndarray  # bool
    several: np.ndarray  # bool: a stored cluster of several images

    @classmethod
    def of(cls, table: _Table, stored: dict[bytes, _Stored]) -> _StoredFlags:
        import numpy as np

        flags = cls(*(np.zeros(len(table.shas), bool) for _ in range(3)))
        clusters = {info.key: info for info in stored.values()}
        rows = table.rows(list(clusters))
        for row, info in zip(rows.tolist(), clusters.values(), strict=True):
            if row >= 0:
                flags.leaked[row], flags.conflict[row], flags.several[row] = info.leaked, info.conflict, info.several
        return flags

    def losing_clusters(self, table: _Table, roots: np.ndarray, survivors: dict[int, int]) -> list[str]:
        """The stored clusters of several whose representative is not its new cluster's survivor."""
        import numpy as np

        rows = np.flatnonzero(self.several)
        return [table.shas[r].decode() for r in rows.tolist() if survivors[int(roots[r])] != r]


def _survivors(catalog: Catalog, table: _Table, roots: np.ndarray) -> tuple[dict[int, int], set[int]]:
    """The survivor row of each cluster (by root row) by the representative rule, and the roots of
    the clusters whose rows were found for more than one class."""
    import numpy as np

    shas = [sha.decode() for sha in table.shas.tolist()]
    several = np.flatnonzero(np.bincount(roots, minlength=len(roots))[roots] > 1)
    details = _member_details(catalog, [shas[r] for r in several.tolist()])
    survivors = {int(root): int(root) for root in np.unique(roots)}
    wnids: dict[int, set[str]] = {}
    for row in several.tolist():
        root, best = int(roots[row]), survivors[int(roots[row])]
        wnids.setdefault(root, set()).update(details[shas[row]].wnids)
        if details[shas[row]].survival_order(shas[row]) < details[shas[best]].survival_order(shas[best]):
            survivors[root] = row
    return survivors, {root for root, found in wnids.items() if len(found) > 1}


def _spread_flags(
    catalog: Catalog,
    table: _Table,
    clusters: tuple[np.ndarray, np.ndarray, set[int]],
    survivors: dict[int, int],
    flags: _StoredFlags,
) -> None:
    """Where a stored cluster of several keeps its representative and becomes leaked or conflicted,
    set the flag on all its members in one indexed UPDATE (those not read included). Before the
    statuses of the rows read: a crash in between leaves the representative's stored flags behind,
    so the rerun spreads them again."""
    import numpy as np
    from sqlalchemy import update

    from curation.catalog import LEAKED, DedupStatus, utcnow

    roots, leaked, conflicted = clusters  # root row of each row, leaked rows, roots of conflicted clusters
    cluster_leaked = np.zeros(len(roots), bool)
    cluster_leaked[roots[leaked]] = True
    statuses = DedupStatus.__table__
    with catalog.session() as session:
        for root, row in survivors.items():
            if not flags.several[row]:
                continue
            members = statuses.c.cluster_id == table.shas[row].decode()
            if cluster_leaked[root] and not flags.leaked[row]:
                change = update(statuses).where(members, statuses.c.status != LEAKED)
                session.execute(change.values(status=LEAKED, updated_at=utcnow()))
            if root in conflicted and not flags.conflict[row]:
                change = update(statuses).where(members, statuses.c.label_conflict.is_(False))
                session.execute(change.values(label_conflict=True, updated_at=utcnow()))


def _cluster_everything(
    catalog: Catalog,
    data_dir: Path,
    references: dict[str, Any],
    unchecked: dict[str, Any],
    match: _Match,
    full: bool,
) -> bool:
    """Read every hash: cluster all images (``full``) or merge the new ones into the stored
    clusters; check every image against the ``unchecked`` reference sets and the new ones against
    the others; rebuild the stored index. Returns whether there were new images."""
    import numpy as np

    from curation.dedup_index import StoredIndex

    table = _load_table(catalog, match.orientations, full)
    roots = _cluster(table, match.max_distance, match.margin, full)
    new_rows = np.flatnonzero(table.new)
    checked_before = {name: ref for name, ref in references.items() if name not in unchecked}
    _check_references(catalog, table, checked_before, match, new_rows)
    leaked = _check_references(catalog, table, unchecked, match, None)
    index = StoredIndex.empty(catalog, data_dir, match.rule, match.max_distance)
    index.add(table.shas, table.hashes)
    index.commit(catalog)
    every = full or bool(unchecked)
    affected = np.ones(len(table.shas), bool) if every else np.isin(roots, roots[table.new])
    _write_clusters(catalog, table, roots, affected, leaked, fresh=full and _no_statuses(catalog))
    _mark_clustered(catalog, table, table.new)
    return bool(len(new_rows))


def found_again(session: Any, shas: list[str]) -> None:
    """Images the crawl found again (a new candidate: maybe another class, licence or first find)
    become new to dedup, so that its next run decides their clusters again: the survivor and the
    label-conflict flag depend on every candidate of every member. Their re-find count goes up, new
    ones included: a dedup run that read them before this commit then leaves them new."""
    from sqlalchemy import update

    from curation.catalog import PerceptualHash

    hashes = PerceptualHash.__table__
    for part in _chunks(sorted(shas)):
        session.execute(
            update(hashes).where(hashes.c.sha256.in_(part)).values(clustered=False, refound=hashes.c.refound + 1)
        )


def _no_statuses(catalog: Catalog) -> bool:
    """Whether no image has a dedup status yet (nor, then, a crawl link: both are written together)."""
    from sqlalchemy import select

    from curation.catalog import DedupStatus

    with catalog.session() as session:
        return session.scalar(select(DedupStatus.sha256).limit(1)) is None


def _mark_clustered(catalog: Catalog, read: _Table, rows: np.ndarray) -> None:
    """Record that these rows of ``read`` (a bool mask), new to dedup when read, are clustered and in
    the stored index: only those rows, and only at the re-find count read. An image that a second run
    hashed meanwhile (hashing precedes the dedup lock), or that the crawl found again since, stays new
    for the next run. Last: a crash before leaves them new, and the next run clusters them again to
    the same result. Runs of equal counts in sha256 order: each row is locked in the crawl's order."""
    import numpy as np
    from sqlalchemy import update

    from curation.catalog import PerceptualHash

    shas, counts = read.shas[rows], read.refound[rows]
    if not len(shas):
        return
    starts = np.flatnonzero(np.r_[True, counts[1:] != counts[:-1]])
    ends = np.r_[starts[1:], len(counts)]
    hashes = PerceptualHash.__table__
    with catalog.session() as session:
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            at_count = hashes.c.refound == int(counts[start])
            for part in _chunks([sha.decode() for sha in shas[start:end].tolist()]):
                session.execute(update(hashes).where(hashes.c.sha256.in_(part), at_count).values(clustered=True))


def _cluster_members(catalog: Catalog, shas: list[str]) -> set[str]:
    """Every image of the stored clusters of ``shas`` (an image alone is its own cluster), found
    through the index on ``dedup_status.cluster_id``."""
    from sqlalchemy import select

    from curation.catalog import DedupStatus

    members = set(shas)
    with catalog.session() as session:
        keys: set[str] = set()
        for part in _chunks(shas):
            for sha, cluster in session.execute(
                select(DedupStatus.sha256, DedupStatus.cluster_id).where(DedupStatus.sha256.in_(part))
            ):
                keys.add(cluster or sha)
        members |= keys
        for part in _chunks(sorted(keys)):
            members.update(session.scalars(select(DedupStatus.sha256).where(DedupStatus.cluster_id.in_(part))))
    return members


def _chunks(items: list[Any], size: int = 500) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load_table(catalog: Catalog, orientations: int, full: bool, subset: Any = None) -> _Table:
    """Stream hash rows into numpy arrays, a block of rows at a time (~0.2 KB an image with 2
    orientations; no per-image Python object outlives its block): every row, the rows new to dedup
    (``subset=NEW_ONLY``: not clustered yet) or those of a list of sha256s."""
    import numpy as np
    from sqlalchemy import select

    from curation.catalog import DedupStatus, PerceptualHash
    from curation.hashing import ImageHashes, to_unsigned, unpack_extra

    columns = [PerceptualHash.phash, PerceptualHash.dhash, PerceptualHash.phash_mirror, PerceptualHash.dhash_mirror]
    extra = [PerceptualHash.orientation_hashes] if orientations > 2 else []
    head = (PerceptualHash.sha256, PerceptualHash.clustered, DedupStatus.cluster_id, PerceptualHash.refound)
    stmt = select(*head, *columns, *extra).outerjoin(DedupStatus, DedupStatus.sha256 == PerceptualHash.sha256)
    if subset is NEW_ONLY:  # through the partial index on the unclustered rows
        statements = [stmt.where(PerceptualHash.clustered.is_(False))]
    elif subset is not None:
        statements = [stmt.where(PerceptualHash.sha256.in_(part)) for part in _chunks(list(subset))]
    else:
        statements = [stmt]
    empty = (
        np.zeros(0, "S64"),
        np.zeros((0, 2 * orientations), np.uint64),
        np.zeros(0, bool),
        np.zeros(0, "S64"),
        np.zeros(0, np.int64),
    )
    blocks: list[tuple[np.ndarray, ...]] = [empty]
    with catalog.session() as session:
        for statement in statements:
            for part in session.execute(statement.execution_options(yield_per=LOAD_BLOCK)).partitions():
                hashes = [
                    ImageHashes(
                        *(to_unsigned(v) for v in row[4:8]), extra=unpack_extra(row[8]) if extra else ()
                    ).orientation_row()[: 2 * orientations]
                    for row in part
                ]
                blocks.append(
                    (
                        np.array([row[0] for row in part], dtype="S64"),
                        np.array(hashes, dtype=np.uint64).reshape(-1, 2 * orientations),
                        np.array([not row[1] for row in part], dtype=bool),
                        np.array([row[2] or "" for row in part], dtype="S64"),
                        np.array([row[3] for row in part], dtype=np.int64),
                    )
                )
    shas, hashes, new, cluster_ids, refound = (np.concatenate(column) for column in zip(*blocks, strict=True))
    order = np.argsort(shas, kind="stable")
    table = _Table(shas[order], hashes[order], new[order], np.full(len(shas), -1, dtype=np.int64), refound[order])
    if not full:
        cluster_ids = cluster_ids[order]
        members = np.flatnonzero(cluster_ids != b"")
        table.stored_cluster[members] = table.rows(cluster_ids[members])
    return table


def _cluster(
    table: _Table, max_distance: int, margin: int, full: bool, links: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """The root row of every row's cluster: the stored clusters (unless ``full``) merged with the
    matches of the new rows and with ``links`` (pairs of rows found matching elsewhere), or every
    row matched against all."""
    import numpy as np

    from curation.near_duplicates import UnionFind, merge_matches

    uf = UnionFind(len(table.shas))
    if not full:
        stored = np.flatnonzero(table.stored_cluster >= 0)
        uf.union(stored, table.stored_cluster[stored])
    new = None if full else np.flatnonzero(table.new)
    if full or len(new):
        merge_matches(table.hashes, uf, max_distance, margin, new)
    if links is not None:
        uf.union(*links)
    return uf.roots()


def _check_references(
    catalog: Catalog, table: _Table, references: dict[str, Any], match: _Match, rows: np.ndarray | None
) -> np.ndarray:
    """Rewrite the links of the reference sets checked now (other sets' links stay), of every row or
    of ``rows`` only; returns whether each row is leaked by any set's link."""
    import numpy as np
    from sqlalchemy import delete, insert, select

    from curation.catalog import DuplicateLink

    queried = np.arange(len(table.shas)) if rows is None else rows
    for name, ref in references.items():
        links = _reference_links(table.hashes[queried], table.shas[queried], name, ref, match)
        with catalog.session() as session:
            if rows is None:
                session.execute(delete(DuplicateLink).where(DuplicateLink.reference == name))
            else:
                for part in _chunks([sha.decode() for sha in table.shas[queried]]):
                    session.execute(
                        delete(DuplicateLink).where(DuplicateLink.reference == name, DuplicateLink.sha256.in_(part))
                    )
            if links:
                session.execute(insert(DuplicateLink), links)
    linked_to_a_set = DuplicateLink.reference.is_not(None)
    with catalog.session() as session:
        if rows is None:
            linked = list(session.scalars(select(DuplicateLink.sha256).where(linked_to_a_set).distinct()))
        else:  # a few clusters: their images' links by the sha256 index
            linked = [
                sha
                for part in _chunks([sha.decode() for sha in table.shas])
                for sha in session.scalars(
                    select(DuplicateLink.sha256).where(linked_to_a_set, DuplicateLink.sha256.in_(part)).distinct()
                )
            ]
    found = table.rows(linked)
    leaked = np.zeros(len(table.shas), dtype=bool)
    leaked[found[found >= 0]] = True
    return leaked


def _reference_links(hashes: np.ndarray, shas: np.ndarray, name: str, ref: Any, match: _Match) -> list[dict]:
    """A link per (image, reference item) within the rule: the smallest distance, then the first
    orientation."""
    import numpy as np

    from curation.hamming_index import HammingIndex
    from curation.hashing import ORIENTATIONS
    from curation.near_duplicates import iter_matches

    if not len(hashes):
        return []
    index = HammingIndex(ref.phash, match.max_distance)
    found = list(iter_matches(hashes, index, ref.dhash, match.max_distance, match.margin))
    q, c, d, k = (
        np.concatenate([getattr(f, a) for f in found]) if found else np.zeros(0, np.int64)
        for a in ("query", "item", "distance", "orientation")
    )
    best = np.lexsort((k, d, c, q))
    first = best[np.r_[True, (q[best][1:] != q[best][:-1]) | (c[best][1:] != c[best][:-1])]] if len(q) else best
    return [
        {
            "sha256": shas[q[i]].decode(),
            "other": ref.keys[c[i]].decode("utf-8", "replace"),
            "reference": name,
            "hash_kind": ORIENTATIONS[int(k[i])].kind,
            "distance": int(d[i]),
        }
        for i in first
    ]


def _status_row(sha: str, status: str, cluster: str | None = None, conflict: bool = False, reason: str | None = None):
    return {"sha256": sha, "status": status, "cluster_id": cluster, "label_conflict": conflict, "reason": reason}


def _write_clusters(
    catalog: Catalog,
    table: _Table,
    roots: np.ndarray,
    affected: np.ndarray,
    leaked: np.ndarray,
    conflict: np.ndarray | None = None,
    fresh: bool = False,
) -> None:
    """Decide the statuses and crawl links of the affected rows' clusters, a batch of clusters at a
    time, and write what changed (``fresh``: nothing is stored yet, so write without reading). A
    ``conflict`` row flags its whole cluster as found for several classes (a stored flag that members
    not read carry)."""
    import numpy as np

    rows = np.flatnonzero(affected)
    rows = rows[np.argsort(roots[rows], kind="stable")]  # grouped by cluster, each in sha256 order
    starts = np.flatnonzero(np.r_[True, roots[rows][1:] != roots[rows][:-1]]) if len(rows) else rows
    ends = np.r_[starts[1:], len(rows)].astype(np.int64) if len(rows) else rows
    cluster_leaked = np.zeros(len(roots), dtype=bool)
    cluster_leaked[roots[leaked]] = True
    cluster_conflict = np.zeros(len(roots), dtype=bool)
    if conflict is not None:
        cluster_conflict[roots[conflict]] = True
    flags = (cluster_leaked[roots], cluster_conflict[roots], fresh)
    batch: list[np.ndarray] = []
    size = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        batch.append(rows[start:end])
        size += end - start
        if size >= STATUS_BATCH:
            _decide_and_write(catalog, table, batch, *flags)
            batch, size = [], 0
    if batch:
        _decide_and_write(catalog, table, batch, *flags)


def _decide_and_write(
    catalog: Catalog,
    table: _Table,
    clusters: list[np.ndarray],
    leaked: np.ndarray,
    conflicted: np.ndarray,
    fresh: bool,
) -> None:
    """Statuses and crawl links of whole clusters (rows); the survivor of a cluster of several: the
    largest resolution, then the most open licence, then the earliest found."""
    import numpy as np

    from curation.catalog import DUPLICATE, LEAKED, REPRESENTATIVE
    from curation.hashing import ORIENTATIONS

    several = [members for members in clusters if len(members) > 1]
    details = _member_details(catalog, [table.shas[i].decode() for m in several for i in m])
    status_rows: dict[str, dict[str, Any]] = {}
    links: dict[str, dict[str, Any]] = {}
    for members in clusters:
        shas = [table.shas[i].decode() for i in members]
        is_leaked = bool(leaked[members[0]])
        if len(members) == 1:
            status_rows[shas[0]] = _status_row(shas[0], LEAKED if is_leaked else REPRESENTATIVE)
            continue
        best = min(range(len(members)), key=lambda j: details[shas[j]].survival_order(shas[j]))
        rep_sha = shas[best]
        conflict = bool(conflicted[members[0]]) or len(set().union(*(details[sha].wnids for sha in shas))) > 1
        # The link names the survivor; in a chain of near-duplicates its distance can exceed the threshold.
        distances = np.bitwise_count(table.hashes[members][:, 0::2] ^ table.hashes[members[best], 0])
        nearest = np.argmin(distances, axis=1)  # the first orientation at the smallest distance
        for j, sha in enumerate(shas):
            status = LEAKED if is_leaked else (REPRESENTATIVE if j == best else DUPLICATE)
            status_rows[sha] = _status_row(sha, status, rep_sha, conflict)
            if j != best:
                kind, distance = ORIENTATIONS[int(nearest[j])].kind, int(distances[j, nearest[j]])
                links[sha] = {
                    "sha256": sha,
                    "other": rep_sha,
                    "reference": None,
                    "hash_kind": kind,
                    "distance": distance,
                }
    _write_changes(catalog, status_rows, links, read_stored=not fresh)


@dataclass
class _Member:
    """What the survivor rule reads about one image of a cluster of several."""

    pixels: int
    found_at: datetime
    licence: int = UNKNOWN_LICENCE_RANK
    wnids: set[str] = field(default_factory=set)

    def survival_order(self, sha: str) -> tuple[Any, ...]:
        return (-self.pixels, self.licence, self.found_at, sha)


def _member_details(catalog: Catalog, shas: list[str]) -> dict[str, _Member]:
    """Resolution, first find, best licence and classes of the given images (indexed look-ups, in
    sha256 order: consecutive look-ups share index pages)."""
    from sqlalchemy import select

    from curation.catalog import Candidate, Image

    shas = sorted(shas)
    details: dict[str, _Member] = {}
    with catalog.session() as session:
        for start in range(0, len(shas), 500):
            part = shas[start : start + 500]
            for sha, width, height, created in session.execute(
                select(Image.sha256, Image.width, Image.height, Image.created_at).where(Image.sha256.in_(part))
            ):
                details[sha] = _Member(width * height, created)
            for sha, wnid, licence, created in session.execute(
                select(Candidate.image_sha256, Candidate.wnid, Candidate.license, Candidate.created_at).where(
                    Candidate.image_sha256.in_(part)
                )
            ):
                member = details[sha]
                member.wnids.add(wnid)
                member.licence = min(member.licence, licence_rank(licence))
                if created is not None and created < member.found_at:
                    member.found_at = created
    return details


def _write_changes(
    catalog: Catalog,
    status_rows: dict[str, dict[str, Any]],
    crawl_links: dict[str, dict[str, Any]],
    read_stored: bool = True,
) -> None:
    """Write only what changed for the images of ``status_rows``: new and changed statuses, new,
    changed and stale crawl links (their stored rows read by primary key / index, unless nothing
    is stored). New rows go in sha256 order: neighbours in the random-keyed indexes share pages."""
    from sqlalchemy import bindparam, delete, insert, update

    from curation.catalog import DedupStatus, DuplicateLink, utcnow

    if not status_rows:
        return
    with catalog.session() as session:
        existing, old_links = _stored_rows(session, list(status_rows)) if read_stored else ({}, {})
        fields = ("status", "cluster_id", "label_conflict", "reason")
        new_rows = [status_rows[sha] for sha in sorted(status_rows) if sha not in existing]
        changed = [
            row
            for sha, row in status_rows.items()
            if sha in existing and existing[sha] != tuple(row[f] for f in fields)
        ]
        statuses = DedupStatus.__table__  # Core executemany: the ORM bulk paths cost ~4x as much here
        if new_rows:
            session.execute(insert(statuses).values(updated_at=utcnow()), new_rows)
        if changed:
            values = {f: bindparam(f"new_{f}") for f in fields}
            by_sha = statuses.c.sha256 == bindparam("row_sha")
            rows = [{"row_sha": row["sha256"], **{f"new_{f}": row[f] for f in fields}} for row in changed]
            session.execute(update(statuses).where(by_sha).values(**values, updated_at=utcnow()), rows)
        stale = [
            row.id
            for sha, row in old_links.items()
            if sha not in crawl_links
            or tuple(crawl_links[sha][k] for k in ("other", "hash_kind", "distance"))
            != (row.other, row.hash_kind, row.distance)
        ]
        if stale:
            session.execute(delete(DuplicateLink).where(DuplicateLink.id.in_(stale)))
        added = [crawl_links[sha] for sha in sorted(crawl_links) if sha not in old_links or old_links[sha].id in stale]
        if added:
            session.execute(insert(DuplicateLink.__table__).values(created_at=utcnow()), added)


def _stored_rows(session: Any, shas: list[str]) -> tuple[dict[str, tuple], dict[str, Any]]:
    """The stored status fields and crawl link of each of these images, by primary key / index."""
    from sqlalchemy import select

    from curation.catalog import DedupStatus, DuplicateLink

    existing, old_links = {}, {}
    status_columns = (DedupStatus.status, DedupStatus.cluster_id, DedupStatus.label_conflict, DedupStatus.reason)
    link_columns = (DuplicateLink.id, DuplicateLink.sha256, DuplicateLink.other, DuplicateLink.hash_kind)
    for part in _chunks(shas):
        for sha, *fields in session.execute(
            select(DedupStatus.sha256, *status_columns).where(DedupStatus.sha256.in_(part))
        ):
            existing[sha] = tuple(fields)
        crawl = DuplicateLink.reference.is_(None)
        for row in session.execute(
            select(*link_columns, DuplicateLink.distance).where(DuplicateLink.sha256.in_(part), crawl)
        ):
            old_links[row.sha256] = row
    return existing, old_links


def _summarise(catalog: Catalog) -> Summary:
    """The catalog-wide counts of the summary line: one pass over the statuses (conditional sums; a
    cluster's members share its leaked and label-conflict flags, and a cluster that is not leaked
    has one representative that names it) and a count of the images."""
    from sqlalchemy import and_, case, distinct, func, select

    from curation.catalog import DUPLICATE, LEAKED, REPRESENTATIVE, DedupStatus, Image

    def rows_where(*conditions: Any) -> Any:
        return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)

    status, cluster = DedupStatus.status, DedupStatus.cluster_id
    counts = select(
        rows_where(status == REPRESENTATIVE),
        rows_where(status == DUPLICATE),
        rows_where(status == LEAKED),
        rows_where(DedupStatus.label_conflict.is_(True)),
        rows_where(status == REPRESENTATIVE, cluster.is_not(None)),
        func.count(distinct(case((status == LEAKED, cluster)))),
        rows_where(status == LEAKED, cluster.is_(None)),
    )
    summary = Summary()
    with catalog.session() as session:
        summary.images = session.scalar(select(func.count()).select_from(Image)) or 0
        reps, dups, leaked, conflicts, kept_clusters, leaked_clusters, leaked_alone = session.execute(counts).one()
    summary.representatives, summary.duplicates, summary.leaked = int(reps), int(dups), int(leaked)
    summary.clusters, summary.label_conflicts = int(kept_clusters) + int(leaked_clusters), int(conflicts)
    summary.leaked_representatives = int(leaked_clusters) + int(leaked_alone)
    return summary
