"""The catalog on SQLite and a real PostgreSQL: race-free opening, `db copy`, bad URLs, long web
strings, several review servers and crawl drivers on one catalog."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from sqlalchemy import func, select
from test_annotate import build_review_catalog, client, csrf_of

from curation import catalog as cat
from curation.dbcopy import copy_catalog
from curation.errors import CurationError
from tests.replay_server import JPEG, ReplayServer, Reply, photo_for

OPEN_AND_COUNT = """
import sys, time
from sqlalchemy import func, select
from curation import catalog as cat
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
catalog = cat.open_catalog(sys.argv[1])
with catalog.session() as s:
    print(s.scalar(select(func.count()).select_from(cat.ImageClass)))
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no catalog in it yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    server = request.getfixturevalue("postgres")
    url = server.create_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return url


def test_eight_processes_open_one_fresh_catalog_at_once(fresh_url):
    start = time.time() + 3.0  # all eight interpreters are up by then and open within a millisecond
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_COUNT, fresh_url, str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err for _out, err in results]
    assert [out.strip() for out, _err in results] == ["200"] * 8
    catalog = cat.open_catalog(fresh_url)
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(cat.SearchQuery)) == 409  # seeded once
        assert cat.current_revision(catalog.engine) == cat.head_revision()
    catalog.engine.dispose()


# --------------------------------------------------------------------------- db copy


def every_row(url: str) -> dict[str, list[tuple]]:
    engine = cat.make_engine(url)
    with engine.connect() as conn:
        rows = {t.name: sorted(conn.execute(select(t)).all(), key=repr) for t in cat.Base.metadata.sorted_tables}
    engine.dispose()
    return rows


def filled_catalog(root: Path) -> str:
    """A SQLite catalog with rows in every table (a review catalog plus the stage tables it lacks)."""
    review = build_review_catalog(root, n_queue=4)
    catalog = cat.open_catalog(review.url)
    sha, wnid = review.queue[0]
    with catalog.session() as s:
        s.add(cat.PerceptualHash(sha256=sha, phash=-(2**63), dhash=2**63 - 1, phash_mirror=1, dhash_mirror=2,
                                 orientation_hashes=bytes(range(96))))  # fmt: skip
        s.add(cat.DuplicateLink(sha256=sha, other="b" * 64, hash_kind="phash", distance=3))
        s.add(cat.ReferenceSet(name="imagenet_val", hash_file="refs/val.npy", count=3, complete=True))
        s.add(cat.PossibleCopy(sha256=sha, other="val/x.JPEG", reference="imagenet_val", kind="embed+orb", score=31.5,
                               cosine=0.71))  # fmt: skip
        s.add(cat.Annotation(sha256=sha, wnid=wnid, annotator="ann", verdict="accept", note="é ünïcode ✓"))
        release = cat.Release(name="r", version="1", out_dir="out", n_images=1, settings='{"a": 1}')
        s.add(release)
        s.flush()
        s.add(cat.ReleaseItem(release_id=release.id, sha256=sha, wnid=wnid, file="a.jpg"))
    catalog.engine.dispose()
    return review.url


def test_db_copy_round_trip_sqlite_postgresql_sqlite_keeps_every_row(tmp_path, postgres, run_cli):
    source = filled_catalog(tmp_path / "src")
    before = every_row(source)
    assert all(before.values()), [name for name, rows in before.items() if not rows]
    pg = postgres.create_database()
    try:
        first = run_cli("db", "copy", source, pg)
        assert first.returncode == 0, first.stderr
        assert f"{sum(map(len, before.values()))} rows in {len(before)} tables" in first.stdout
        assert every_row(pg) == before
        back = f"sqlite:///{tmp_path / 'back.sqlite'}"
        assert copy_catalog(pg, back).rows == sum(map(len, before.values()))
        assert every_row(back) == before

        again = run_cli("db", "copy", source, pg)  # a target with work in it is refused, untouched
        assert again.returncode == 1 and again.stderr.count("\n") == 1 and "not empty" in again.stderr
        assert every_row(pg) == before
        catalog = cat.open_catalog(pg)  # the sequences were moved past the copied ids
        with catalog.session() as s:
            s.add(cat.Release(name="next", version="2", out_dir="out2"))
            s.flush()
            assert s.scalar(select(func.count()).select_from(cat.Release)) == 2
        catalog.engine.dispose()
    finally:
        postgres.drop_database(pg)


def test_db_copy_into_a_catalog_that_was_only_opened(tmp_path, pg_url):
    source = filled_catalog(tmp_path / "src")
    assert copy_catalog(source, pg_url).rows == sum(map(len, every_row(source).values()))
    assert every_row(pg_url) == every_row(source)


# --------------------------------------------------------------------------- bad input


def test_bad_postgresql_urls_get_one_line_and_write_nothing(tmp_path, postgres, run_cli):
    source = f"sqlite:///{tmp_path / 'src.sqlite'}"
    cat.open_catalog(source).engine.dispose()
    before = every_row(source)
    closed_port = postgres.url("postgres").replace(f":{postgres.port}/", ":9/")
    cases = {
        "password authentication failed": postgres.url("postgres", password="wrong"),
        'database "nowhere" does not exist': postgres.url("nowhere"),
        "Connection refused": closed_port,
    }
    for reason, url in cases.items():
        for args in (("--db", url, "status"), ("db", "copy", source, url), ("db", "copy", url, source)):
            result = run_cli(*args)
            assert result.returncode == 1, (args, result.stdout)
            assert result.stderr.count("\n") == 1 and reason in result.stderr, result.stderr
            assert "wrong" not in result.stderr  # the password stays hidden
    assert every_row(source) == before
    blocker = tmp_path / "no_psycopg"
    (blocker / "psycopg").mkdir(parents=True)
    (blocker / "psycopg" / "__init__.py").write_text("raise ImportError(\"No module named 'psycopg'\")\n")
    missing = run_cli("--db", postgres.url("postgres"), "status", env={"PYTHONPATH": f"{blocker}:{REPO}"})
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, missing.stderr
    assert "psycopg" in missing.stderr and "curation[postgres]" in missing.stderr


# --------------------------------------------------------------------------- web strings


def crawl_settings(tmp_path: Path, db_url: str) -> Path:
    config = tmp_path / "curation.toml"
    config.write_text(
        f'[catalog]\ndb = "{db_url}"\ndata_dir = "{tmp_path / "data"}"\n'
        '[crawl]\nallow_private_hosts = ["127.0.0.0/8"]\nconcurrency = 4\nper_host = 4\nretries = 0\n'
        'contact = "tests@example.org"\nmin_side = 64\n'
    )
    return config


def test_overlong_web_strings_are_cut_to_their_columns(tmp_path, catalog_url, run_cli):
    with ReplayServer() as server:
        server.route("/long.jpg", Reply(body=photo_for("long"), headers=JPEG))
        url_list = tmp_path / "list.csv"
        with open(url_list, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["url", "wnid", "license", "author", "title"])
            writer.writerow([f"{server.base}/long.jpg", "n01498041", "CC BY " + "x" * 500, "A" * 5000, "T" * 9000])
        config = crawl_settings(tmp_path, catalog_url)
        result = run_cli("--config", str(config), "crawl", "--urls", str(url_list))
    assert result.returncode == 0, result.stderr
    catalog = cat.open_catalog(catalog_url)
    with catalog.session() as s:
        row = s.scalars(select(cat.Candidate)).one()
    catalog.engine.dispose()
    assert row.status == cat.DOWNLOADED
    assert row.license == ("CC BY " + "x" * 500)[:100]  # String(100): cut
    assert row.author == "A" * 5000  # Text: kept whole


# --------------------------------------------------------------------------- concurrency on PostgreSQL


def start_review_server(db_url: str, data_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "curation", "--db", db_url, "--data-dir", str(data_dir), "annotate", "serve",
         "--port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )  # fmt: skip
    line = proc.stdout.readline()
    assert "review page at" in line, proc.stderr.read() if proc.poll() is not None else line
    return proc, line.split("review page at ", 1)[1].split()[0].rstrip("/")


def test_three_review_servers_twenty_clients_each_every_vote_lands_once(tmp_path, pg_url):
    review = build_review_catalog(tmp_path / "src", n_queue=4)
    cat.open_catalog(pg_url).engine.dispose()
    copy_catalog(review.url, pg_url)
    # room for every vote: a fixed rule of 60 (refusing a closed pair's surplus is test_review_api's)
    room = {"CURATION_ANNOTATE_CONSENSUS": "fixed", "CURATION_ANNOTATE_VOTES_NEEDED": "60"}
    servers = [start_review_server(pg_url, review.data_dir, room) for _ in range(3)]
    try:
        n = 60
        verdicts = ("accept", "wrong_class", "ambiguous", "low_quality")
        sessions = []
        for i in range(n):
            http = client()
            base = servers[i % 3][1]
            sessions.append((http, csrf_of(http.get(f"{base}/?annotator=ann{i:02d}", timeout=30).text)))
        barrier = threading.Barrier(n)
        answers: list[list[tuple[int, int]]] = [[] for _ in range(n)]

        def vote(i: int) -> None:
            http, token = sessions[i]
            sha, wnid = review.queue[i % 4]  # many annotators on the same few pairs at the same moment
            barrier.wait()
            for round_ in range(2):  # a first verdict, then a change of mind through another server
                base = servers[(i + round_) % 3][1]
                decision = {"id": f"{sha}:{wnid}", "verdict": verdicts[(i + round_) % 4], "note": f"n{i}"}
                response = http.post(
                    f"{base}/api/v1/decisions",
                    json={"decisions": [decision]},
                    headers={"X-CSRF-Token": token},
                    timeout=60,
                )
                answers[i].append((response.status_code, response.json()["recorded"]))

        threads = [threading.Thread(target=vote, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        for proc, _base in servers:
            proc.terminate()
            proc.wait(timeout=30)
    assert answers == [[(200, 1), (200, 1)]] * n
    catalog = cat.open_catalog(pg_url)
    with catalog.session() as s:
        rows = s.execute(select(cat.Annotation.sha256, cat.Annotation.wnid, cat.Annotation.annotator,
                                cat.Annotation.verdict)).all()  # fmt: skip
    catalog.engine.dispose()
    assert sorted(rows) == sorted((*review.queue[i % 4], f"ann{i:02d}", verdicts[(i + 1) % 4]) for i in range(n))


def test_two_crawl_drivers_on_one_catalog_fetch_every_candidate_once(tmp_path, pg_url):
    n = 40
    with ReplayServer(latency=0.3) as server:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        url_list = tmp_path / "list.csv"
        with open(url_list, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["url", "wnid"])
            writer.writerows([f"{server.base}/img/{i}.jpg", "n01498041"] for i in range(n))
        drivers = []
        for name in ("a", "b"):  # separate data directories: only the catalog is shared
            (tmp_path / name).mkdir()
            config = crawl_settings(tmp_path / name, pg_url)
            drivers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "curation", "--config", str(config), "crawl", "--urls", str(url_list)],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
            )
        outputs = [d.communicate(timeout=300) for d in drivers]
        fetched = [p for _t, p, _h in server.requests if p.startswith("/img/")]
    codes = sorted(d.returncode for d in drivers)
    assert codes[0] == 0, outputs
    refused = [err for d, (_out, err) in zip(drivers, outputs, strict=True) if d.returncode != 0]
    assert all(err.strip().endswith("another crawl is running on this catalog; wait for it or stop it")
               and err.count("\n") == 1 for err in refused), refused  # fmt: skip
    assert sorted(fetched) == sorted(f"/img/{i}.jpg" for i in range(n))  # each exactly once
    catalog = cat.open_catalog(pg_url)
    with catalog.session() as s:
        statuses = s.execute(select(cat.Candidate.status, func.count()).group_by(cat.Candidate.status)).all()
    catalog.engine.dispose()
    assert statuses == [(cat.DOWNLOADED, n)]


def test_catalog_lock_refuses_a_second_holder(catalog_url):
    catalog = cat.open_catalog(catalog_url)
    other = cat.make_engine(catalog_url)
    from curation.dialect import catalog_lock

    with catalog_lock(catalog.engine, "crawl", wait=False) as first:
        assert first
        with catalog_lock(other, "crawl", wait=False) as second:
            assert not second
    with catalog_lock(other, "crawl", wait=False) as after:
        assert after
    other.dispose()
    catalog.engine.dispose()


def test_lock_held_and_commit_counter_see_other_connections_without_taking_anything(catalog_url):
    """What `filter --follow` polls: whether a crawl holds the catalog's crawl lock (read, not taken:
    the holder's lock is untouched and a second holder is still refused), and a counter that moves when
    another connection commits (and, on SQLite, stays put otherwise)."""
    from curation.dialect import catalog_lock, commit_counter, lock_held

    catalog = cat.open_catalog(catalog_url)
    other = cat.make_engine(catalog_url)
    assert not lock_held(other, "crawl")
    with catalog_lock(catalog.engine, "crawl", wait=False) as held:
        assert held and lock_held(other, "crawl") and not lock_held(other, "dedup")
        with catalog_lock(other, "crawl", wait=False) as second:
            assert not second
    assert not lock_held(other, "crawl")
    with other.connect() as probe:
        before = commit_counter(probe)
        probe.rollback()
        if other.dialect.name == "sqlite":  # PostgreSQL's WAL also moves for the server's own upkeep
            assert commit_counter(probe) == before
            probe.rollback()
        with catalog.session() as session:
            session.merge(cat.Meta(key="probe", value="1"))
        assert commit_counter(probe) != before
        probe.rollback()
    other.dispose()
    catalog.engine.dispose()


def test_catalog_error_names_no_password(postgres):
    with pytest.raises(CurationError, match=r"\*\*\*") as info:
        cat.open_catalog(postgres.url("postgres", password="s3cret-pw"))
    assert "s3cret-pw" not in str(info.value)
