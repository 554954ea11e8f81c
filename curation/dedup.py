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
import os
import re
import sys
from collections import defaultdict
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

    catalog = open_catalog(settings.db_url)
    action = args.reference_command
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
    if action == "import" or (action == "add" and path.suffix == ".npz"):
        n = reference_sets.import_file(catalog, settings.data_dir, args.name, path)
        print(f"reference import: {args.name}: {n} hashes from {path}")
        return 0
    if args.chunk_size < 1:
        raise CurationError("--chunk-size must be at least 1")
    summary = reference_sets.add_folder(
        catalog,
        settings.data_dir,
        args.name,
        path,
        workers=options.resolve(DedupOptions, settings, {"workers": args.workers}).processes,
        chunk_size=args.chunk_size,
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
    not a failure."""
    from sqlalchemy import insert, select, update
    from tqdm import tqdm

    from curation.catalog import Image, PerceptualHash
    from curation.engine import Sink
    from curation.hashing import pack_extra, to_signed

    missing = PerceptualHash.sha256 if orientations == 2 else PerceptualHash.orientation_hashes
    with catalog.session() as session:
        todo = session.execute(
            select(Image.sha256, Image.path, PerceptualHash.sha256.is_not(None))
            .outerjoin(PerceptualHash, PerceptualHash.sha256 == Image.sha256)
            .where(missing.is_(None))
            .order_by(Image.sha256)
        ).all()
    failures: dict[str, str] = {}
    if not todo:
        return 0, 0, failures
    has_row = {sha: bool(known) for sha, _, known in todo}

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

    items = [(sha, str((data_dir / path).absolute())) for sha, path, _ in todo]
    hashed = completed = 0
    with Sink(write, key=lambda record: record[0], rows=HASH_BATCH) as sink:
        records = executor.map(HashTask(orientations), items, batch_size=HASH_CHUNK, workers=workers)
        for sha, hashes, error in tqdm(records, total=len(items), desc="hashing", unit="img", file=sys.stderr):
            if error is not None:
                if not has_row[sha]:
                    failures[sha] = error
                continue
            if sink.add((sha, hashes)):  # False: a batch that ran twice (its worker died)
                completed += has_row[sha]
                hashed += not has_row[sha]
    return hashed, completed, failures


@dataclass
class _Match:
    """The best match of a query image (by position) with an indexed item (by position)."""

    query: int
    item: int
    distance: int
    kind: str  # the query's orientation that matched: "phash", "phash_mirror", "phash_rot90", ...


def find_matches(
    query_hashes: np.ndarray, index_phash: np.ndarray, index_dhash: np.ndarray, max_distance: int, margin: int
) -> list[_Match]:
    """Every (query, item) pair within the thresholds in some orientation of the query, with the
    smallest pHash distance. ``query_hashes`` is an (n, 2k) uint64 array: (pHash, dHash) of the first
    k orientations of :data:`curation.hashing.ORIENTATIONS` (k = 2: the image and its mirror; 8: all)."""
    import numpy as np

    from curation.hamming_index import HammingIndex
    from curation.hashing import ORIENTATIONS

    index = HammingIndex(index_phash, max_distance)
    best: dict[tuple[int, int], _Match] = {}
    for k in range(query_hashes.shape[1] // 2):
        kind, p_col, d_col = ORIENTATIONS[k].kind, 2 * k, 2 * k + 1
        q, c, dist = index.search(query_hashes[:, p_col])
        if len(q) == 0:
            continue
        ddist = np.bitwise_count(query_hashes[q, d_col] ^ index_dhash[c])
        keep = ddist <= max_distance + margin
        for qi, ci, di in zip(q[keep].tolist(), c[keep].tolist(), dist[keep].tolist(), strict=True):
            current = best.get((qi, ci))
            if current is None or di < current.distance:
                best[(qi, ci)] = _Match(qi, ci, di, kind)
    return list(best.values())


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


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
    2 or 8), check reference sets, and write statuses and links."""
    import numpy as np
    from sqlalchemy import delete, func, insert, select

    from curation import reference_sets
    from curation.catalog import DUPLICATE, LEAKED, REPRESENTATIVE, Candidate, DuplicateLink, Image, PerceptualHash
    from curation.hashing import ORIENTATIONS, ImageHashes, to_unsigned, unpack_extra

    references = {name: reference_sets.load(catalog, data_dir, name) for name in against}  # fail before work
    if orientations not in ORIENTATION_CHOICES:
        raise CurationError(f"orientations must be 2 or 8, got {orientations!r}")
    if executor is None:
        from curation.engine.local import LocalExecutor

        executor = LocalExecutor()
    hashed_now, rehashed, failures = _hash_new_images(catalog, data_dir, workers, orientations, executor)

    with catalog.session() as session:
        images = session.execute(
            select(
                Image.sha256,
                Image.width,
                Image.height,
                Image.created_at,
                PerceptualHash.phash,
                PerceptualHash.dhash,
                PerceptualHash.phash_mirror,
                PerceptualHash.dhash_mirror,
                PerceptualHash.orientation_hashes,
            )
            .join(PerceptualHash, PerceptualHash.sha256 == Image.sha256)
            .order_by(Image.sha256)
        ).all()
        candidates = session.execute(
            select(Candidate.image_sha256, Candidate.wnid, Candidate.license, Candidate.created_at).where(
                Candidate.image_sha256.is_not(None)
            )
        ).all()
        n_images = session.scalar(select(func.count()).select_from(Image))
    shas = [row.sha256 for row in images]
    position = {sha: i for i, sha in enumerate(shas)}
    # (pHash, dHash) of each queried orientation; a row that could not be completed queries its own
    # hashes again in place of the missing orientations.
    hashes = np.array(
        [
            ImageHashes(
                *(to_unsigned(v) for v in (r.phash, r.dhash, r.phash_mirror, r.dhash_mirror)),
                extra=unpack_extra(r.orientation_hashes),
            ).orientation_row()
            for r in images
        ],
        dtype=np.uint64,
    ).reshape(-1, 2 * len(ORIENTATIONS))[:, : 2 * orientations]

    wnids: dict[str, set[str]] = defaultdict(set)
    best_licence: dict[str, int] = {}
    found_at: dict[str, datetime] = {row.sha256: row.created_at for row in images}
    for sha, wnid, licence, created in candidates:
        if sha not in position:
            continue
        wnids[sha].add(wnid)
        best_licence[sha] = min(best_licence.get(sha, UNKNOWN_LICENCE_RANK), licence_rank(licence))
        if created is not None and created < found_at[sha]:
            found_at[sha] = created

    # Near-duplicates inside the crawl.
    uf = _UnionFind(len(shas))
    if len(shas) > 1:
        for match in find_matches(hashes, hashes[:, 0], hashes[:, 1], max_distance, margin):
            uf.union(match.query, match.item)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(shas)):
        members[uf.find(i)].append(i)

    def survival_order(i: int) -> tuple[Any, ...]:
        row = images[i]
        return (-(row.width * row.height), best_licence.get(shas[i], UNKNOWN_LICENCE_RANK), found_at[shas[i]], shas[i])

    # Leaks: new matches for the sets checked now; earlier links of other sets are kept.
    leak_links: dict[str, list[dict[str, Any]]] = {}
    for name, ref in references.items():
        links = []
        for match in find_matches(hashes, ref.phash, ref.dhash, max_distance, margin):
            links.append(
                {
                    "sha256": shas[match.query],
                    "other": ref.keys[match.item].decode("utf-8", "replace"),
                    "reference": name,
                    "hash_kind": match.kind,
                    "distance": match.distance,
                }
            )
        leak_links[name] = links
    with catalog.session() as session:
        for name, links in leak_links.items():
            session.execute(delete(DuplicateLink).where(DuplicateLink.reference == name))
            if links:
                session.execute(insert(DuplicateLink), links)
        leaked_shas = set(
            session.scalars(select(DuplicateLink.sha256).where(DuplicateLink.reference.is_not(None))).all()
        )

    # Statuses and crawl links.
    status_rows: dict[str, dict[str, Any]] = {}
    crawl_links: dict[str, dict[str, Any]] = {}
    summary = Summary(
        images=n_images or 0,
        hashed_now=hashed_now,
        rehashed=rehashed,
        failed=len(failures),
        against=list(against),
        rule=f"pHash <= {max_distance}, dHash <= {max_distance + margin}, {orientations} orientations",
    )
    for group in members.values():
        ordered = sorted(group, key=survival_order)
        representative = ordered[0]
        rep_sha = shas[representative]
        classes = set().union(*(wnids.get(shas[i], set()) for i in group))
        conflict = len(group) > 1 and len(classes) > 1
        leaked = any(shas[i] in leaked_shas for i in group)
        if len(group) > 1:
            summary.clusters += 1
        for i in ordered:
            sha = shas[i]
            status = LEAKED if leaked else (REPRESENTATIVE if i == representative else DUPLICATE)
            status_rows[sha] = {
                "sha256": sha,
                "status": status,
                "cluster_id": rep_sha if len(group) > 1 else None,
                "label_conflict": conflict,
                "reason": None,
            }
            summary.label_conflicts += conflict
            if i != representative:
                # The link names the survivor; in a chain of near-duplicates its distance can
                # exceed the threshold.
                distances = np.bitwise_count(hashes[i, 0::2] ^ hashes[representative, 0])
                nearest = int(np.argmin(distances))  # the first orientation at the smallest distance
                crawl_links[sha] = {
                    "sha256": sha,
                    "other": rep_sha,
                    "reference": None,
                    "hash_kind": ORIENTATIONS[nearest].kind,
                    "distance": int(distances[nearest]),
                }
        summary.representatives += not leaked
        summary.leaked_representatives += leaked
        summary.duplicates += sum(1 for i in group if i != representative) if not leaked else 0
        summary.leaked += len(group) if leaked else 0
    for sha, reason in failures.items():
        status_rows[sha] = {
            "sha256": sha,
            "status": "failed",
            "cluster_id": None,
            "label_conflict": False,
            "reason": reason,
        }
    _write_statuses(catalog, status_rows, crawl_links)
    return summary


def _write_statuses(
    catalog: Catalog, status_rows: dict[str, dict[str, Any]], crawl_links: dict[str, dict[str, Any]]
) -> None:
    """Write only what changed: new and changed statuses, new, changed and stale crawl links."""
    from sqlalchemy import delete, insert, select, update

    from curation.catalog import DedupStatus, DuplicateLink

    with catalog.session() as session:
        existing = {
            row.sha256: row
            for row in session.execute(
                select(
                    DedupStatus.sha256,
                    DedupStatus.status,
                    DedupStatus.cluster_id,
                    DedupStatus.label_conflict,
                    DedupStatus.reason,
                )
            ).all()
        }
        new_rows, changed = [], []
        for sha, row in status_rows.items():
            old = existing.get(sha)
            if old is None:
                new_rows.append(row)
            elif (old.status, old.cluster_id, old.label_conflict, old.reason) != (
                row["status"],
                row["cluster_id"],
                row["label_conflict"],
                row["reason"],
            ):
                changed.append(row)
        if new_rows:
            session.execute(insert(DedupStatus), new_rows)
        if changed:
            session.execute(update(DedupStatus), changed)
        old_links = {
            row.sha256: row
            for row in session.execute(
                select(
                    DuplicateLink.id,
                    DuplicateLink.sha256,
                    DuplicateLink.other,
                    DuplicateLink.hash_kind,
                    DuplicateLink.distance,
                ).where(DuplicateLink.reference.is_(None))
            ).all()
        }
        stale = [
            row.id
            for sha, row in old_links.items()
            if sha not in crawl_links
            or tuple(crawl_links[sha][k] for k in ("other", "hash_kind", "distance"))
            != (row.other, row.hash_kind, row.distance)
        ]
        if stale:
            session.execute(delete(DuplicateLink).where(DuplicateLink.id.in_(stale)))
        fresh = [link for sha, link in crawl_links.items() if sha not in old_links or old_links[sha].id in stale]
        if fresh:
            session.execute(insert(DuplicateLink), fresh)
