"""`curation db copy SOURCE_URL TARGET_URL`: move a catalog between databases (SQLite <-> PostgreSQL).

Table by table in foreign-key order, streamed in batches, all in one target transaction: a failed
copy leaves no rows behind. Row counts are checked per table before the commit; PostgreSQL
sequences are moved past the copied ids. The source must be at this code's schema and the target
empty (a new database, or a catalog that was only opened: its seeded classes are replaced).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from tqdm import tqdm

from curation.catalog import (
    Base,
    ImageClass,
    current_revision,
    database_error,
    head_revision,
    make_engine,
    upgrade_locked,
)
from curation.dialect import catalog_lock
from curation.errors import CurationError

# What opening a new catalog writes: the seed replaces it on copy.
SEED_TABLES = ("classes", "search_queries", "catalog_meta")
BATCH_ROWS = 5000  # rows per INSERT batch: ~1 MB of candidates, a few ms per round trip


@dataclass
class CopyResult:
    tables: int
    rows: int
    seconds: float


def copy_catalog(source_url: str, target_url: str, batch_rows: int = BATCH_ROWS) -> CopyResult:
    """Copy every row of the catalog at ``source_url`` into the empty database at ``target_url``."""
    started = time.monotonic()
    source = _open_source(source_url)
    target = make_engine(target_url)
    try:
        counts = _row_counts(source)
        with catalog_lock(target, "migrate"):
            _check_empty(target)
            if current_revision(target) is None:
                upgrade_locked(target)  # the schema; its seed rows go below, the source's come instead
            with target.begin() as dst, source.connect() as src:
                _clear(dst)
                with tqdm(total=sum(counts.values()), desc="copy", unit=" rows", disable=None) as bar:
                    for table in Base.metadata.sorted_tables:
                        if table.info.get("derived"):  # kept by the target's triggers as the rows arrive
                            continue
                        copied = _copy_table(src, dst, table, batch_rows, bar)
                        in_target = dst.scalar(select(func.count()).select_from(table))
                        if not copied == in_target == counts[table.name]:
                            raise CurationError(
                                f"{table.name}: {counts[table.name]} rows in the source, {copied} read, "
                                f"{in_target} in the target (was the source written to during the copy?); nothing copied"
                            )
                _reset_sequences(dst)
    except SQLAlchemyError as exc:
        raise database_error(target, exc) from None
    finally:
        source.dispose()
        target.dispose()
    return CopyResult(len(counts), sum(counts.values()), time.monotonic() - started)


def _open_source(url: str) -> Engine:
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
        raise CurationError(f"no catalog at {url}")
    engine = make_engine(url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        raise database_error(engine, exc) from None
    if revision is None:
        raise CurationError(f"{engine.url.render_as_string()} is not a catalog (no schema)")
    if revision != head_revision():
        raise CurationError(
            f"the source catalog is at schema {revision}, this code needs {head_revision()}: "
            f"run `curation --db SOURCE_URL db upgrade` first"
        )
    return engine


def _row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: conn.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def _check_empty(engine: Engine) -> None:
    """Refuse a target that holds work: any row beyond what opening a new catalog writes (the seeded
    recipe classes, their queries, catalog facts). A copy that failed half-way can be rerun."""
    revision = current_revision(engine)
    if revision is None:
        return
    if revision != head_revision():
        raise CurationError(f"the target holds a catalog at schema {revision}; copy into a new, empty database")
    filled = {name: n for name, n in _row_counts(engine).items() if n and name not in SEED_TABLES}
    with engine.connect() as conn:
        added = conn.scalar(select(func.count()).select_from(ImageClass).where(ImageClass.origin != "imagenet_a"))
    if added:
        filled["classes (user-added)"] = added
    if filled:
        listed = ", ".join(f"{name} {n}" for name, n in filled.items())
        raise CurationError(f"the target catalog is not empty ({listed} rows); copy into a new, empty database")


def _clear(dst: Connection) -> None:
    """Remove a fresh target's seed rows (inside the copy's transaction)."""
    for table in reversed(Base.metadata.sorted_tables):
        dst.execute(delete(table))


def _copy_table(src: Connection, dst: Connection, table: Table, batch_rows: int, bar: tqdm) -> int:
    copied = 0
    order = list(table.primary_key.columns)
    rows = src.execution_options(yield_per=batch_rows).execute(select(table).order_by(*order))
    for part in rows.partitions(batch_rows):
        dst.execute(insert(table), [dict(row._mapping) for row in part])
        copied += len(part)
        bar.update(len(part))
    return copied


def _reset_sequences(dst: Connection) -> None:
    """Move each PostgreSQL id sequence past the copied ids (SQLite needs nothing)."""
    if dst.dialect.name != "postgresql":
        return
    for table in Base.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is True or (column.autoincrement == "auto" and column.type.python_type is int):
                dst.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                        f"COALESCE(MAX({column.name}), 1), MAX({column.name}) IS NOT NULL) FROM {table.name}"
                    )
                )
