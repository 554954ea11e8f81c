"""Hashing the images dedup has not hashed yet, a page at a time on the executor's workers."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from curation.store.base import MissingObject
from curation.store.reader import FetchedInOrder, ImageReader, ImageRef, Source, fetch_sources

if TYPE_CHECKING:
    from curation.catalog import Catalog
    from curation.engine import Executor


HASH_BATCH = 500  # rows per transaction


HASH_CHUNK = 16  # images per task: 16 x ~5 ms hashing outweighs a task's scheduling cost


# Images read and hashed per page. All at once, 1 M images held ~0.8 GB in the driver, copied into
# each forked worker: 2.7 GiB for the process tree (benchmarks/scale.py, tail shape).
HASH_PAGE = 20_000


class HashTask:
    """Hashes a batch of (sha256, image ref) on a worker, the batch's images fetched from the store
    together, or of (sha256, source) fetched by the driver (see :class:`FetchedInOrder`):
    (sha256, hashes, None) or (sha256, None, reason) per image."""

    resource = "cpu"

    def __init__(self, orientations: int) -> None:
        self.orientations = orientations

    def setup(self) -> None:
        pass

    def run(self, batch: list[tuple[str, ImageRef | Source]]) -> list[tuple[str, Any, str | None]]:
        from curation.hashing import hash_file

        records: list[tuple[str, Any, str | None]] = []
        for (sha, _), source in zip(batch, fetch_sources([item for _, item in batch]), strict=True):
            try:
                if isinstance(source, Exception):
                    raise source
                records.append((sha, hash_file(source, orientations=self.orientations), None))
            except MissingObject as exc:
                records.append((sha, None, str(exc)))
            except Exception as exc:  # noqa: BLE001 - any undecodable file is a per-image failure
                records.append((sha, None, f"{type(exc).__name__}: {exc}"))
        return records


def hash_new_images(
    catalog: Catalog, images: ImageReader, workers: int, orientations: int, executor: Executor
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
            page_hashed, page_completed = _hash_page(catalog, images, page, workers, orientations, executor, failures)
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
    images: ImageReader,
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

    items: Sequence[Any] = [(sha, images.ref(path)) for sha, path, _ in page]
    if executor.name == "local":  # forked workers: the driver fetches (obstore is not fork-safe)
        items = FetchedInOrder(items)
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
