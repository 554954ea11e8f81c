"""The crawl's cluster path (curation/crawl_cluster.py) without a cluster: the keyed pool of the
local executor runs the same FetchTask and ClusterPipeline a Ray cluster runs (tests/test_engine_ray.py
runs them on 2 loopback nodes), and storage.recover reads the journals its batches leave."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from curation import crawl as crawl_module
from curation import crawl_cluster, storage
from curation.crawl import crawl
from curation.engine.local import LocalExecutor
from tests.crawl_images import sample_bytes, with_comment
from tests.replay_server import ReplayServer
from tests.test_crawl_download import GOLDFINCH, STINGRAY, serve_cases, settings_for, write_list


def _catalog(root: Path, base: str) -> dict[str, list[tuple]]:
    con = sqlite3.connect(root / "c.sqlite")
    try:
        rows = con.execute(
            "SELECT wnid, url, status, reason, image_sha256, final_url, attempts FROM candidates"
        ).fetchall()
        images = con.execute("SELECT sha256, path, width, height, format, bytes, mode, multi_class FROM images")
        return {
            "candidates": sorted(tuple(v.replace(base, "BASE") if isinstance(v, str) else v for v in r) for r in rows),
            "images": sorted(images.fetchall()),
            "files": sorted(p.name for p in (root / "data" / "images").rglob("*") if p.is_file() and p.stem[:1] != "."),
        }
    finally:
        con.close()


def test_the_cluster_path_records_what_the_local_loop_records(tmp_path, monkeypatch) -> None:
    """Every broken case, redirects and Retry-After; one URL found for two classes on different pages."""
    monkeypatch.setattr(crawl_module, "JOB_PAGE", 7)  # several pages: a page's URLs are known to the next
    batches: list[int] = []
    run_batch = crawl_cluster.FetchTask.run
    monkeypatch.setattr(
        crawl_cluster.FetchTask, "run", lambda task, batch: batches.append(len(batch)) or run_batch(task, batch)
    )
    results = {}
    for name in ("local", "cluster"):
        root = tmp_path / name
        root.mkdir()
        if name == "cluster":
            monkeypatch.setattr(crawl_module, "open_cluster", lambda *_: LocalExecutor())
        with ReplayServer() as server:
            expected = serve_cases(server)
            rows = [(url, STINGRAY) for url in expected] + [(f"{server.base}/ok/0.jpg", GOLDFINCH)]
            summary = crawl(settings_for(root), urls=write_list(root / "list.csv", rows))
            assert len(server.hits("/ok/0.jpg")) == 1  # one fetch for both classes
            results[name] = (summary.outcomes, summary.reasons, summary.new_images, _catalog(root, server.base))
        assert not list((root / "data" / storage.STAGING).glob("*.b*.journal"))  # dropped once committed
    assert sum(batches) == len(expected) and len(batches) > 1  # each URL fetched once, by the task
    assert results["cluster"] == results["local"]
    assert results["local"][0]["failed"] >= 10 and results["local"][2] >= 10


def test_recover_reads_every_journal_of_the_catalog_and_only_its_own(tmp_path) -> None:
    def stored(text: str, journal: storage.WriteJournal) -> str:
        data = with_comment(sample_bytes(0), text)
        return storage.store(tmp_path, storage.validate(data), data, journal).relative_to(tmp_path).as_posix()

    driver, batch1, batch2 = (storage.WriteJournal(tmp_path, n) for n in ("cat1", "cat1.b1", "cat1.b9"))
    other = storage.WriteJournal(tmp_path, "cat2.b1")
    kept, lost1, lost2, foreign = stored("k", batch1), stored("1", batch1), stored("2", batch2), stored("f", other)
    for journal in (driver, batch1, batch2, other):
        journal.close()
    assert not driver.path.exists()  # a journal that wrote nothing leaves no file
    asked: list[list[str]] = []

    def recorded(paths: list[str]) -> set[str]:
        asked.append(paths)
        return {kept}

    assert storage.recover(tmp_path, "cat1", recorded) == (0, 2)
    assert asked == [sorted([kept, lost1, lost2])]
    assert (tmp_path / kept).exists() and (tmp_path / foreign).exists()
    assert not (tmp_path / lost1).exists() and not (tmp_path / lost2).exists()
    assert not batch1.path.exists() and not batch2.path.exists() and other.path.exists()
