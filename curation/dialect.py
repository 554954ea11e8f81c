"""Everything that differs between the catalog's two databases, SQLite and PostgreSQL, in one place:
insert-or-ignore, upserts, locks, and fitting web-sourced strings into ``String(n)`` columns
(PostgreSQL enforces the length, SQLite ignores it)."""

from __future__ import annotations

import fcntl
import hashlib
import os
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


def _flock_held(path: Path) -> bool:
    """Whether some process holds a flock() on ``path``, read from /proc/locks without taking the lock
    (taking it, even shared and for a moment, would make a crawl starting at that instant refuse)."""
    try:
        st = path.stat()
        locks = Path("/proc/locks").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: fall back to a momentary shared lock
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(len(f) > 5 and f[1] == "FLOCK" and f[5] == inode for f in (line.split() for line in locks.splitlines()))


def lock_held(engine: Engine, name: str) -> bool:
    """Whether another process holds the catalog-wide lock ``name`` of :func:`catalog_lock`, without
    taking it: pg_locks on PostgreSQL (a bigint advisory key is classid:objid), /proc/locks on SQLite."""
    if engine.dialect.name != "postgresql":
        path = _sqlite_lock_path(engine, name)
        return path is not None and _flock_held(path)
    key = _lock_key(name) & (2**64 - 1)
    query = text(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database() "
        "AND l.classid = CAST(:hi AS oid) AND l.objid = CAST(:lo AS oid) AND l.objsubid = 1"
    )
    with engine.connect() as conn:
        return bool(conn.scalar(query, {"hi": key >> 32, "lo": key & (2**32 - 1)}))


def commit_counter(conn: Any) -> Any:
    """A value that changes whenever a transaction is committed to the catalog by any other connection
    (one O(1) query on a connection kept open): SQLite's ``PRAGMA data_version``; on PostgreSQL the WAL
    insert position, which any write to the server moves."""
    if conn.dialect.name == "postgresql":
        return conn.scalar(text("SELECT pg_current_wal_insert_lsn()::text"))
    return conn.exec_driver_sql("PRAGMA data_version").scalar()


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
