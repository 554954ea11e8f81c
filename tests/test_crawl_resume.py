"""A crawl killed with SIGKILL (or stopped with Ctrl-C) leaves catalog and disk consistent; a rerun
finishes the rest without fetching stored images again. Also: sources without network fail gently."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.replay_server import JPEG, ReplayServer, Reply, photo_for

N = 160


def write_setup(tmp_path: Path, server: ReplayServer) -> tuple[Path, Path]:
    config = tmp_path / "curation.toml"
    config.write_text(
        "[crawl]\nallow_private_hosts = true\nconcurrency = 2\nper_host = 2\nretries = 0\n"
        'contact = "tests@example.org"\n'
    )
    wnids = ["n01498041", "n01531178", "n01534433"]
    listing = tmp_path / "list.tsv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["url", "wnid"])
        writer.writerows((f"{server.base}/img/{i}.jpg", wnids[i % 3]) for i in range(N))
    return config, listing


def crawl_cmd(tmp_path: Path, config: Path, listing: Path) -> list[str]:
    return [sys.executable, "-m", "curation", "--config", str(config), "--db", str(tmp_path / "c.sqlite"),
            "--data-dir", str(tmp_path / "data"), "crawl", "--urls", str(listing)]  # fmt: skip


def env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}, "PYTHONPATH": str(REPO)}


def downloaded_urls(db: Path) -> set[str]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return {u for (u,) in con.execute("SELECT url FROM candidates WHERE status = 'downloaded'")}
    except sqlite3.OperationalError:  # tables not created yet
        return set()
    finally:
        con.close()


def start_and_stop(tmp_path: Path, server: ReplayServer, sig: int) -> tuple[int, str, str, set[str]]:
    config, listing = write_setup(tmp_path, server)
    proc = subprocess.Popen(
        crawl_cmd(tmp_path, config, listing), cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(downloaded_urls(tmp_path / "c.sqlite")) < 15:
        assert proc.poll() is None and time.monotonic() < deadline, "crawl ended before it could be interrupted"
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, downloaded_urls(tmp_path / "c.sqlite")


def assert_consistent(tmp_path: Path, exact: bool = True) -> sqlite3.Connection:
    """Every catalogued image is on disk, whole; with ``exact`` also nothing else is (no partial or
    unrecorded file). Right after a SIGKILL, files written but not yet recorded may remain; the
    rerun removes them."""
    con = sqlite3.connect(tmp_path / "c.sqlite")
    data = tmp_path / "data"
    on_disk = {
        p.relative_to(data).as_posix() for p in (data / "images").rglob("*") if p.is_file() and p.name != ".catalog-id"
    }
    in_catalog = {path for (path,) in con.execute("SELECT path FROM images")}
    assert in_catalog <= on_disk
    if exact:
        assert on_disk == in_catalog
    for sha, path in con.execute("SELECT sha256, path FROM images"):
        assert hashlib.sha256((data / path).read_bytes()).hexdigest() == sha
    assert con.execute(
        "SELECT count(*) FROM candidates WHERE status = 'downloaded' AND image_sha256 IS NULL"
    ).fetchone() == (0,)
    return con


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_crawl_resumes_without_duplicates(tmp_path, sig):
    with ReplayServer(latency=0.05) as server:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        returncode, out, err, before = start_and_stop(tmp_path, server, sig)
        if sig == signal.SIGKILL:
            assert returncode == -signal.SIGKILL
        else:
            assert returncode == 130, err
            assert "crawl interrupted" in out and "Traceback" not in err
        assert 15 <= len(before) < N
        assert_consistent(tmp_path, exact=sig != signal.SIGKILL).close()
        hits_before = {p: len(server.hits(p)) for p in {p for _t, p, _h in server.requests}}
        config, listing = tmp_path / "curation.toml", tmp_path / "list.tsv"
        rerun = subprocess.run(
            crawl_cmd(tmp_path, config, listing), cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
        for url in before:  # committed before the stop: never fetched again
            path = url.removeprefix(server.base)
            assert len(server.hits(path)) == hits_before[path] == 1
    con = assert_consistent(tmp_path)
    assert con.execute("SELECT count(*), count(DISTINCT url) FROM candidates").fetchone() == (N, N)
    assert con.execute("SELECT status, count(*) FROM candidates GROUP BY status").fetchall() == [("downloaded", N)]
    assert con.execute("SELECT count(*) FROM images").fetchone() == (N,)
    con.close()
    assert not list((tmp_path / "data").rglob("*.part"))
    assert all(j.read_text() == "" for j in (tmp_path / "data" / ".staging").glob("*.journal"))  # nothing in flight
    status = subprocess.run([sys.executable, "-m", "curation", "--db", str(tmp_path / "c.sqlite"), "status", "--json"],
                            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    rows = {r["wnid"]: r for r in json.loads(status.stdout)["classes"]}
    assert sum(rows[w]["downloaded"] for w in ("n01498041", "n01531178", "n01534433")) == N


def test_sources_without_network_fail_gracefully(run_cli, tmp_path):
    with ReplayServer() as server:
        closed = server.base  # the port is closed once the server stops
    (tmp_path / "curation.toml").write_text(
        '[crawl]\nallow_private_hosts = true\nretries = 0\ncontact = "tests@example.org"\n'
        + "".join(f'[sources.{s}]\nbase_url = "{closed}/{s}"\n' for s in ("inaturalist", "commons", "openverse"))
    )
    result = run_cli("--db", str(tmp_path / "c.sqlite"), "--data-dir", str(tmp_path / "data"), "crawl",
                     env={"FLICKR_API_KEY": ""})  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4 and "Traceback" not in result.stderr
    assert lines[0].startswith("curation crawl: source inaturalist stopped at n01498041: connection_error")
    assert (
        lines[1] == "curation crawl: source flickr skipped: no API key: set FLICKR_API_KEY or [sources.flickr] api_key"
    )
    assert lines[2].startswith("curation crawl: source commons stopped") and lines[3].startswith(
        "curation crawl: source openverse stopped"
    )
    assert result.stdout.startswith("crawl done in") and "found 0 new candidates" in result.stdout


def test_bad_arguments_are_one_line(run_cli, tmp_path):
    db = str(tmp_path / "c.sqlite")
    for args, message in [
        (["--classes", "n00000000"], "unknown class(es) n00000000"),
        (["--sources", "bing"], "unknown source(s) bing"),
        (["--urls", str(tmp_path / "none.csv")], "no such file"),
    ]:
        result = run_cli("--db", db, "crawl", *args)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
