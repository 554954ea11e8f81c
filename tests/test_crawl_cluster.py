"""The crawl's cluster path (curation/crawl/cluster.py) without a cluster: the keyed pool of the
local executor runs the same FetchTask and ClusterPipeline a Ray cluster runs (tests/test_engine_ray.py
runs them on 2 loopback nodes), and the store's recovery reads the journals its batches leave."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from curation import storage
from curation.crawl import cluster as crawl_cluster
from curation.crawl import crawl, jobs, stage
from curation.crawl.writes import BatchJournals
from curation.engine.local import LocalExecutor
from curation.store import image_key, open_store
from curation.store.recovery import recover
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
    monkeypatch.setattr(jobs, "JOB_PAGE", 7)  # several pages: a page's URLs are known to the next
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
            monkeypatch.setattr(stage, "open_cluster", lambda *_: LocalExecutor())
        with ReplayServer() as server:
            expected = serve_cases(server)
            rows = [(url, STINGRAY) for url in expected] + [(f"{server.base}/ok/0.jpg", GOLDFINCH)]
            summary = crawl(settings_for(root), urls=write_list(root / "list.csv", rows))
            assert len(server.hits("/ok/0.jpg")) == 1  # one fetch for both classes
            results[name] = (summary.outcomes, summary.reasons, summary.new_images, _catalog(root, server.base))
        assert not list((root / "data" / storage.STAGING).glob("store-*.b*.journal"))  # dropped once committed
    assert sum(batches) == len(expected) and len(batches) > 1  # each URL fetched once, by the task
    assert results["cluster"] == results["local"]
    assert results["local"][0]["failed"] >= 10 and results["local"][2] >= 10


def test_recover_reads_every_journal_of_the_catalog_and_only_its_own(tmp_path) -> None:
    store = open_store(str(tmp_path / "images"))

    def stored(text: str) -> str:
        key = image_key(f"{text:0>64}", "jpg")
        store.put_if_absent(key, text.encode())
        return key

    batches, other = BatchJournals(tmp_path, "cat1"), BatchJournals(tmp_path, "cat2")
    kept, lost1, lost2, foreign = stored("a"), stored("b"), stored("c"), stored("d")
    batches.begin("b1", [kept, lost1])
    batches.begin("b9", [lost2])
    other.begin("b1", [foreign])
    assert sorted(p.name for p in (tmp_path / storage.STAGING).iterdir()) == [
        "store-cat1.b1.journal", "store-cat1.b9.journal", "store-cat2.b1.journal"
    ]  # fmt: skip
    asked: list[list[str]] = []

    def recorded(keys: list[str]) -> set[str]:
        asked.append(keys)
        return {kept}

    assert recover(store, tmp_path, "cat1", recorded) == 2
    assert asked == [sorted([kept, lost1, lost2])]
    assert store.exists(kept) and store.exists(foreign) and not store.exists(lost1) and not store.exists(lost2)
    assert [p.name for p in (tmp_path / storage.STAGING).iterdir()] == ["store-cat2.b1.journal"]
    other.drop()
    assert list((tmp_path / storage.STAGING).iterdir()) == []
