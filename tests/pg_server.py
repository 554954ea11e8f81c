"""A throwaway PostgreSQL server for the tests and benchmarks (Debian's package, a real server)."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _pg_bin() -> Path:
    """$CURATION_PG_BIN, else the newest Debian PostgreSQL (/usr/lib/postgresql/<major>/bin)."""
    if os.environ.get("CURATION_PG_BIN"):
        return Path(os.environ["CURATION_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
PG_PASSWORD = "curation-test"
PG_TEMPLATE = "curation_template"


class PostgresServer:
    """A throwaway PostgreSQL server: ``initdb`` into a temp dir, ``pg_ctl start`` on 127.0.0.1 at a
    free port (as the ``postgres`` user when run as root: the server refuses root), password auth."""

    def __init__(self) -> None:
        if not (PG_BIN / "pg_ctl").exists():
            raise RuntimeError(f"PostgreSQL is not installed in {PG_BIN}: run `make postgresql` (Debian's package)")
        self.root = Path(tempfile.mkdtemp(prefix="curation-pg-"))
        self.data = self.root / "data"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.names = itertools.count()
        (self.root / "pw").write_text(PG_PASSWORD)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "pw", "postgres")
        self._pg("initdb", "-D", self.data, "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={self.root / 'pw'}",
                 "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        options = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
        self._pg("pg_ctl", "-D", self.data, "-l", self.root / "log", "-o", options, "-w", "-t", "60", "start")

    def _pg(self, tool: str, *args: object) -> None:
        runas = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*runas, str(PG_BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip() or result.stdout.strip()}")

    def url(self, database: str = "postgres", password: str = PG_PASSWORD) -> str:
        return f"postgresql+psycopg://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, template: str = "template0") -> str:
        """A new database (a copy of ``template``); returns its SQLAlchemy URL."""
        name = f"t{next(self.names)}"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")

    def stop(self) -> None:
        try:
            self._pg("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
