"""The crawl at scale: start-up touches only what a killed run had in flight (never the whole store),
pending candidates and URL lists stream in pages, new candidates are counted without counting the table."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from curation import storage
from curation.crawl import crawl, jobs
from curation.errors import CurationError
from curation.sources.urls import read_rows
from tests.conftest import REPO
from tests.crawl_images import sample_bytes, with_comment
from tests.replay_server import JPEG, ReplayServer, Reply, photo_for
from tests.test_crawl_download import settings_for, write_list

WNIDS = ["n01498041", "n01531178", "n01534433"]


def catalog_id(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT value FROM catalog_meta WHERE key = 'catalog_id'").fetchone()[0]
    finally:
        con.close()


def stored_paths(db: Path) -> set[str]:
    con = sqlite3.connect(db)
    try:
        return {p for (p,) in con.execute("SELECT path FROM images")}
    finally:
        con.close()


def old_write(data_dir: Path, data: bytes, journal: storage.WriteJournal) -> Path:
    """An image written as runs before the image store wrote it: its data_dir-relative path journaled,
    then the file."""
    image = storage.validate(data)
    journal.begin(image.relative_path)
    path = Path(data_dir) / image.relative_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_recover_removes_only_what_was_in_flight(tmp_path):
    keep, orphan = sample_bytes(0), with_comment(sample_bytes(0), "orphan")
    journal = storage.WriteJournal(tmp_path, "cat1")
    kept = old_write(tmp_path, keep, journal)
    lost = old_write(tmp_path, orphan, journal)
    journal.recorded([kept.relative_to(tmp_path).as_posix()])
    assert journal.path.read_text().split() == [lost.relative_to(tmp_path).as_posix()]
    journal.close()
    partial = tmp_path / storage.STAGING / f"{'0' * 64}.123.abc{storage.TEMP_SUFFIX}"
    partial.write_bytes(keep[:100])
    unrelated = kept.parent / "unrelated.jpg"  # not journaled: never looked at
    unrelated.write_bytes(keep)
    asked: list[list[str]] = []

    def recorded(paths: list[str]) -> set[str]:
        asked.append(paths)
        return {kept.relative_to(tmp_path).as_posix()}

    assert storage.recover(tmp_path, "cat1", recorded) == (1, 1)
    assert asked == [[lost.relative_to(tmp_path).as_posix()]]  # only the in-flight path is looked up
    assert kept.exists() and unrelated.exists() and not lost.exists() and not partial.exists()
    assert not journal.path.exists() and storage.recover(tmp_path, "cat1", recorded) == (0, 0)


def test_rerun_after_kill_9_of_a_run_before_the_image_store_leaves_no_staging_or_unrecorded_files(tmp_path):
    settings = settings_for(tmp_path)
    with ReplayServer() as server:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        crawl(
            settings, urls=write_list(tmp_path / "a.csv", [(f"{server.base}/img/{i}.jpg", WNIDS[0]) for i in range(3)])
        )
        recorded = stored_paths(tmp_path / "c.sqlite")
        # A writer of before the image store killed with SIGKILL: two images journaled and written, one temp
        # file half written.
        script = (
            "import os, signal, sys\n"
            "from curation import storage\n"
            "from tests.crawl_images import sample_bytes, with_comment\n"
            "journal = storage.WriteJournal(sys.argv[1], sys.argv[2])\n"
            "for i in range(2):\n"
            "    data = with_comment(sample_bytes(1), f'in flight {i}')\n"
            "    image = storage.validate(data)\n"
            "    journal.begin(image.relative_path)\n"
            "    (storage.Path(sys.argv[1]) / image.relative_path).parent.mkdir(parents=True, exist_ok=True)\n"
            "    (storage.Path(sys.argv[1]) / image.relative_path).write_bytes(data)\n"
            "(storage.Path(sys.argv[1]) / storage.STAGING / ('f' * 64 + '.1.2.part')).write_bytes(data[:99])\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        data_dir, name = str(tmp_path / "data"), catalog_id(tmp_path / "c.sqlite")
        killed = subprocess.run([sys.executable, "-c", script, data_dir, name], env=env, timeout=120)
        assert killed.returncode == -signal.SIGKILL
        staging = tmp_path / "data" / storage.STAGING
        assert len(list(staging.glob(f"*{storage.TEMP_SUFFIX}"))) == 1
        assert len((staging / f"{name}.journal").read_text().split()) == 2
        crawl(settings, urls=write_list(tmp_path / "b.csv", [(f"{server.base}/img/new.jpg", WNIDS[1])]))
    on_disk = {p.relative_to(tmp_path / "data").as_posix() for p in (tmp_path / "data" / "images").rglob("*.jpg")}
    assert on_disk == stored_paths(tmp_path / "c.sqlite") and len(on_disk) == len(recorded) + 1
    assert not list(staging.glob(f"*{storage.TEMP_SUFFIX}"))
    assert not (staging / f"{name}.journal").exists()  # the journal of a run before the image store: read, gone
    assert (staging / f"store-{name}.journal").read_text() == ""  # every write of the rerun was recorded


def test_crawl_start_up_does_not_walk_the_store(tmp_path, monkeypatch):
    settings = settings_for(tmp_path)
    store = tmp_path / "data" / "images"
    for i in range(50):  # files the catalog does not know, written by no crawl: not the crawl's business
        (store / f"{i:02x}" / "zz").mkdir(parents=True)
        (store / f"{i:02x}" / "zz" / f"note{i}.txt").write_text("unrelated")
    walked: list[str] = []
    real_walk, real_scandir = os.walk, os.scandir

    def watched(real):
        def call(path=".", *args, **kwargs):
            if Path(path).is_relative_to(store):
                walked.append(str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "walk", watched(real_walk))
    monkeypatch.setattr(os, "scandir", watched(real_scandir))
    monkeypatch.setattr(Path, "rglob", watched(Path.rglob))
    with ReplayServer() as server:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        summary = crawl(settings, urls=write_list(tmp_path / "a.csv", [(f"{server.base}/img/1.jpg", WNIDS[0])]))
    assert summary.outcomes["downloaded"] == 1
    assert walked == []
    assert len(list(store.glob("*/zz/note*.txt"))) == 50


def test_pending_candidates_are_read_in_pages_and_each_url_fetched_once(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "JOB_PAGE", 7)
    settings = settings_for(tmp_path)
    settings.toml["crawl"]["retries"] = 0
    with ReplayServer() as server:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
        fail_once = {f"/img/{i}.jpg" for i in range(0, 40, 9)}
        server.prefix(
            "/flaky/",
            lambda path, _q: Reply(500) if len(server.hits(path)) == 1 else Reply(body=photo_for(path), headers=JPEG),
        )
        rows = [(f"{server.base}/img/{i}.jpg", WNIDS[i % 3]) for i in range(40)]
        rows += [(f"{server.base}/img/0.jpg", WNIDS[1])]  # the same URL for another class, 40 rows later
        rows += [(f"{server.base}/flaky{p}", WNIDS[2]) for p in sorted(fail_once)]
        first = crawl(settings, urls=write_list(tmp_path / "a.csv", rows))
        assert first.found["urls"] == 46 and first.outcomes["downloaded"] == 41
        assert all(len(server.hits(f"/img/{i}.jpg")) == 1 for i in range(40))
        again = crawl(settings, urls=write_list(tmp_path / "b.csv", [*rows, (f"{server.base}/img/x.jpg", WNIDS[0])]))
        assert again.found["urls"] == 1  # counted from the insert, duplicates ignored
        assert again.outcomes["downloaded"] == 1
        retried = crawl(settings, urls=write_list(tmp_path / "c.csv", rows[:1]), retry_failed=True)
    assert retried.found["urls"] == 0
    assert first.outcomes["failed"] == 5 and retried.outcomes["downloaded"] == 5


def test_parquet_list_larger_than_one_chunk_streams_every_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 1000
    table = pa.table(
        {"URL": [f"https://example.org/{i}.jpg" for i in range(n)], "wnid": [WNIDS[i % 3] for i in range(n)]}
    )
    pq.write_table(table, tmp_path / "list.parquet", row_group_size=300)
    rows = read_rows(tmp_path / "list.parquet", chunk_rows=64)
    assert not isinstance(rows, list)
    assert next(rows) == {"url": "https://example.org/0.jpg", "wnid": WNIDS[0]}
    rest = list(rows)
    assert len(rest) == n - 1 and rest[-1]["url"] == f"https://example.org/{n - 1}.jpg"
    pq.write_table(pa.table({"url": ["https://example.org/a.jpg"]}), tmp_path / "bad.parquet")
    with pytest.raises(CurationError, match="needs `url` and `wnid` columns"):
        next(read_rows(tmp_path / "bad.parquet"))
