"""Everything that differs between the catalog's two databases, SQLite and PostgreSQL, in one place:
insert-or-ignore, upserts, locks, and fitting web-sourced strings into ``String(n)`` columns
(PostgreSQL enforces the length, SQLite ignores it)."""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import String, Table, literal_column, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from curation.errors import CurationError

SUPPORTED = ("sqlite", "postgresql")


def _insert(bind: Session | Connection, table: Any) -> Any:
    dialect = bind.get_bind().dialect.name if isinstance(bind, Session) else bind.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise CurationError(f"the catalog supports {' and '.join(SUPPORTED)}, not {dialect}")
    return insert(table)


def insert_ignore(bind: Session | Connection, table: Any, rows: list[dict[str, Any]], *, count: bool = False) -> int:
    """Insert ``rows`` (ORM model or Core table), skipping those that break a unique constraint.
    Strings are fitted to their columns first. With ``count``, returns how many rows were new
    (through RETURNING: drivers' row counts for batches differ), else 0."""
    if not rows:
        return 0
    rows = [fit_strings(table, row) for row in rows]
    stmt = _insert(bind, table).on_conflict_do_nothing()
    if not count:
        bind.execute(stmt, rows)
        return 0
    return len(bind.execute(stmt.returning(literal_column("1")), rows).all())


def upsert(bind: Session | Connection, table: Any, values: dict[str, Any], keys: list[str], update: list[str]) -> None:
    """INSERT ... ON CONFLICT (``keys``) DO UPDATE SET ``update``: one atomic statement."""
    stmt = _insert(bind, table).values(**fit_strings(table, values))
    bind.execute(stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update}))


def upsert_from_select(
    bind: Session | Connection, table: Any, columns: list[str], rows: Any, keys: list[str], update: list[str]
) -> None:
    """INSERT INTO ``table`` (``columns``) SELECT ... ON CONFLICT (``keys``) DO UPDATE SET ``update``:
    one set-based statement (SQLite needs the SELECT to have a WHERE clause)."""
    stmt = _insert(bind, table).from_select(columns, rows)
    bind.execute(stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update}))


# --------------------------------------------------------------------------- string lengths


def _string_lengths(table: Any) -> dict[str, int]:
    core: Table = getattr(table, "__table__", table)
    if not isinstance(core, Table):
        return {}  # a lightweight table() names no types
    cached = core.info.get("string_lengths")
    if cached is None:
        cached = {
            c.key: c.type.length for c in core.columns if isinstance(c.type, String) and c.type.length is not None
        }
        core.info["string_lengths"] = cached
    return cached


def fit_strings(table: Any, row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with every string longer than its ``String(n)`` column cut to ``n`` characters, so that
    a long web title, licence or query never stops a run on PostgreSQL (text columns are unbounded)."""
    lengths = _string_lengths(table)
    return {
        k: v[: lengths[k]] if isinstance(v, str) and k in lengths and len(v) > lengths[k] else v for k, v in row.items()
    }


def fit_object(obj: Any) -> Any:
    """An ORM object with its string attributes fitted (see ``fit_strings``); returns it."""
    for key, length in _string_lengths(type(obj)).items():
        value = getattr(obj, key, None)
        if isinstance(value, str) and len(value) > length:
            setattr(obj, key, value[:length])
    return obj


# --------------------------------------------------------------------------- locks


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for ``name`` (stable across processes and versions)."""
    return int.from_bytes(hashlib.sha256(f"curation:{name}".encode()).digest()[:8], "big", signed=True)


def _sqlite_lock_path(engine: Engine, name: str) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database).with_name(f"{Path(database).name}.{name}.lock")


@contextmanager
def _file_lock(path: Path | None, wait: bool) -> Iterator[bool]:
    if path is None:
        yield True
        return
    try:
        handle = open(path, "a")  # noqa: SIM115 - held for the whole block
    except OSError as exc:
        raise CurationError(f"cannot create the lock file {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        handle.close()


@contextmanager
def catalog_lock(engine: Engine, name: str, *, wait: bool = True) -> Iterator[bool]:
    """Hold the catalog-wide lock ``name`` for the block: an advisory lock on PostgreSQL, a lock file
    beside an SQLite catalog (``<db>.<name>.lock``). Both die with the process, even on kill -9.
    With ``wait=False`` the block gets False instead of waiting when another process holds it."""
    if engine.dialect.name != "postgresql":
        with _file_lock(_sqlite_lock_path(engine, name), wait) as held:
            yield held
        return
    key = _lock_key(name)
    with engine.connect() as conn:
        if wait:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            held = True
        else:
            held = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
        conn.commit()
        try:
            yield held
        finally:
            if held and not conn.closed:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


def in_batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of at most ``size`` items of ``rows``, streaming."""
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
