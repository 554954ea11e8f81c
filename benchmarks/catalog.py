"""The catalog on SQLite vs PostgreSQL, same process, same rows: crawl-outcome and prediction write
rates, `status` (the funnel) and the review page, at N candidates (one image, prediction and kept
verdict each). PostgreSQL is a throwaway local server (tests/pg_server.py), fsync off as in the tests.

    .venv/bin/python benchmarks/catalog.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert, select, update

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import catalog as cat  # noqa: E402
from curation.annotate.app import ReviewConfig, create_app  # noqa: E402
from curation.dialect import in_batches, insert_ignore  # noqa: E402
from tests.pg_server import PostgresServer  # noqa: E402

DISCOVER_BATCH = 1000  # curation.crawl.discover.LISTED_BATCH
OUTCOME_BATCH = 200  # crawl.FLUSH_EVERY
PREDICTION_BATCH = 1000


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def sha(i: int) -> str:
    return hashlib.sha256(i.to_bytes(8, "big")).hexdigest()


def write_candidates(catalog: cat.Catalog, n: int, wnids: list[str]) -> None:
    now = cat.utcnow()
    rows = (
        {"wnid": wnids[i % len(wnids)], "source": "urls", "url": f"http://127.0.0.1/{i}.jpg", "status": cat.PENDING,
         "attempts": 0, "created_at": now, "updated_at": now}
        for i in range(n)
    )  # fmt: skip
    for batch in in_batches(rows, DISCOVER_BATCH):
        with catalog.session() as s:
            insert_ignore(s, cat.Candidate, batch)


def write_outcomes(catalog: cat.Catalog, n: int) -> None:
    """As crawl's writer: per batch, insert the new images, then update their candidates by id."""
    with catalog.session() as s:
        ids = list(s.scalars(select(cat.Candidate.id).order_by(cat.Candidate.id)))
    now = cat.utcnow()
    for batch in in_batches(enumerate(ids), OUTCOME_BATCH):
        images = [
            {"sha256": sha(i), "path": f"images/{sha(i)}.jpg", "width": 500, "height": 375, "format": "JPEG",
             "bytes": 1000, "mode": "RGB", "multi_class": False, "created_at": now}
            for i, _id in batch
        ]  # fmt: skip
        updates = [
            {"id": cid, "status": cat.DOWNLOADED, "reason": None, "last_error": None, "image_sha256": sha(i),
             "final_url": None, "attempts": 1, "updated_at": now}
            for i, cid in batch
        ]  # fmt: skip
        with catalog.session() as s:
            insert_ignore(s, cat.Image, images)
            s.execute(update(cat.Candidate), updates)


def write_predictions(catalog: cat.Catalog, n: int, wnids: list[str]) -> None:
    """As the filter: plain inserts of one prediction per pair, in batches."""
    now = cat.utcnow()
    rows = (
        {"sha256": sha(i), "wnid": wnids[i % len(wnids)], "model": "resnet50.tv_in1k", "weights_hash": "0" * 64,
         "rule": "restricted", "status": "ok", "top5": "[[1, 0.5]]", "pred_index": 1, "pred_wnid": wnids[0],
         "confidence": 0.5, "margin": 0.1, "correct": False, "created_at": now}
        for i in range(n)
    )  # fmt: skip
    for batch in in_batches(rows, PREDICTION_BATCH):
        with catalog.session() as s:
            s.execute(insert(cat.Prediction), batch)


def write_verdicts(catalog: cat.Catalog, n: int, wnids: list[str]) -> None:
    now = cat.utcnow()
    for batch in in_batches(range(n), 5000):
        with catalog.session() as s:
            s.execute(
                insert(cat.FilterVerdict),
                [{"sha256": sha(i), "wnid": wnids[i % len(wnids)], "kept": True, "models": "[]",
                  "keep_rule": "all-wrong", "updated_at": now} for i in batch],
            )  # fmt: skip
            s.execute(
                insert(cat.DedupStatus),
                [{"sha256": sha(i), "status": cat.REPRESENTATIVE, "cluster_id": sha(i), "updated_at": now}
                 for i in batch],
            )  # fmt: skip


def measure(url: str, n: int, data_dir: Path) -> dict[str, float]:
    catalog = cat.open_catalog(url)
    with catalog.session() as s:
        wnids = list(s.scalars(select(cat.ImageClass.wnid).order_by(cat.ImageClass.wnid)))
    result = {"discover (candidates/s)": n / timed(lambda: write_candidates(catalog, n, wnids))}
    result["crawl outcomes (rows/s)"] = n / timed(lambda: write_outcomes(catalog, n))
    result["predictions (rows/s)"] = n / timed(lambda: write_predictions(catalog, n, wnids))
    write_verdicts(catalog, n, wnids)

    def status() -> None:
        with catalog.session() as s:
            cat.funnel(s)

    result["status (s)"] = min(timed(status) for _ in range(3))
    app = create_app(ReviewConfig(catalog=catalog, data_dir=data_dir))
    http = app.test_client()
    assert http.get("/?annotator=bench", follow_redirects=True).status_code == 200
    assert "bench" in http.get("/").text
    pages = [timed(lambda: http.get("/")) for _ in range(20)]
    result["review page (ms)"] = 1000 * statistics.median(pages)
    catalog.engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    server = PostgresServer()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            server.admin("CREATE DATABASE bench TEMPLATE template0")
            results = {}
            for name, url in (("SQLite", f"sqlite:///{tmp}/catalog.sqlite"), ("PostgreSQL", server.url("bench"))):
                started = time.perf_counter()
                results[name] = measure(url, args.rows, Path(tmp))
                print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        server.stop()
    print(f"| {args.rows:,} rows | SQLite | PostgreSQL | PostgreSQL / SQLite |")
    print("|---|---:|---:|---:|")
    for metric in results["SQLite"]:
        lite, pg = results["SQLite"][metric], results["PostgreSQL"][metric]
        print(f"| {metric} | {lite:,.1f} | {pg:,.1f} | {pg / lite:.2f}x |")


if __name__ == "__main__":
    main()
