"""Opening the catalog: engines (SQLite in WAL mode with foreign keys on, or PostgreSQL), the Alembic
migrations run under the catalog's migration lock, and the session factory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from curation.dialect import catalog_lock
from curation.errors import CurationError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = PROJECT_ROOT / "db" / "migrations"

# SQLite's page cache per connection (KiB; filled only as pages are read). The default 2 MB holds a
# sliver of the hash-keyed indexes (images, candidates by image), so past ~100k rows every crawled URL
# read its random index pages again from the OS. Measured by benchmarks/crawl_growth.py, 5,000 new
# URLs into a catalog of 300,000 downloaded rows: 445 -> 179 MiB read through syscalls (see README).
SQLITE_CACHE_KIB = 64 * 1024


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL needs the lock it waits for
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout; its folder is created."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        db_path = Path(url[len("sqlite:///") :])
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CurationError(f"cannot create the catalog folder {db_path.parent}: {exc.strerror}") from None
    try:
        engine = create_engine(url, future=True, pool_pre_ping=url.startswith("postgresql"))
    except ImportError as exc:
        hint = " (pip install 'curation[postgres]')" if url.startswith("postgresql") else ""
        raise CurationError(f"cannot use the catalog URL {_hide_password(url)}: {exc}{hint}") from None
    except (SQLAlchemyError, ValueError) as exc:
        raise CurationError(f"bad catalog URL {_hide_password(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name != "postgresql":
        raise CurationError(f"the catalog must be SQLite or PostgreSQL, not {engine.dialect.name}")
    return engine


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(unparsable URL)"


def database_error(engine: Engine, exc: SQLAlchemyError) -> CurationError:
    """One line naming the catalog (password hidden) and the database's own first line of reason."""
    reason = str(exc.orig) if getattr(exc, "orig", None) is not None else str(exc)
    first = next((line.strip() for line in reason.splitlines() if line.strip()), type(exc).__name__)
    return CurationError(f"cannot open the catalog {engine.url.render_as_string()}: {first}")


def alembic_config(engine: Engine | None = None) -> Any:
    """Alembic's config for the shipped migrations (and for ``engine``'s database when given)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


@cache
def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the catalog is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision``, holding the catalog's migration lock."""
    with catalog_lock(engine, "migrate"):
        upgrade_locked(engine, revision)


class Catalog:
    """An open, migrated catalog: an engine plus a session factory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise


def open_catalog(url: str, *, auto_upgrade: bool = True) -> Catalog:
    """Open the catalog at ``url``, creating or upgrading its schema if needed (a new catalog's
    migrations seed the shipped class recipe). Race-free: any number of processes may open one
    fresh catalog at once; the first migrates under the catalog's migration lock, the others wait
    and find it done. With ``auto_upgrade`` off, an old catalog's error names the command to run."""
    engine = make_engine(url)
    try:
        head = head_revision()
        if current_revision(engine) != head:
            with catalog_lock(engine, "migrate"):
                current = current_revision(engine)
                if current != head:
                    if current is not None and not auto_upgrade:
                        raise CurationError(
                            f"the catalog is at schema {current}, this code needs {head}: run `curation db upgrade`"
                        )
                    if current is not None:
                        print(f"curation: upgrading catalog schema {current} -> {head}", file=sys.stderr)
                    upgrade_locked(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise database_error(engine, exc) from None
    except CurationError:
        engine.dispose()
        raise
    return Catalog(engine)


def upgrade_locked(engine: Engine, revision: str = "head") -> None:
    """``upgrade`` for a caller that already holds the migration lock (``catalog_lock(engine, "migrate")``)."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
