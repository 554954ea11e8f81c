"""Crawl growth: does the time per crawled URL depend on the catalog's size?

Crawls the same ``--new`` URLs (served on 127.0.0.1 by :class:`crawl.ImageServer`, distinct 64x64
JPEGs) through the real CLI into two SQLite catalogs: an empty one and one padded with ``--pad``
synthetic downloaded candidates and their images (random hashes, as real ones are), written with
SQL in seconds instead of a crawl of minutes. Prints each crawl's own time per URL (the summary's
"crawl done in" seconds, without interpreter start-up) and the ratio padded / empty: 1.00 means
the crawl costs O(new work), whatever the catalog holds. Median of ``--repeat`` runs, each on fresh
copies of both catalogs.

    .venv/bin/python benchmarks/crawl_growth.py --pad 300000 --new 5000
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from crawl import ImageServer, class_wnids  # noqa: E402  (this folder is on sys.path)

CONFIG = (
    "[crawl]\nallow_private_hosts = true\nconcurrency = 16\nper_host = 16\ncheck_threads = 1\nretries = 0\n"
    'contact = "benchmark@localhost"\n'
)


def tiny_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 80, 40)).save(out, "JPEG", quality=85)
    return out.getvalue()


def cli(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "curation", "--config", str(root / "curation.toml"), "--db",
            str(root / "catalog.sqlite"), "--data-dir", str(root / "data"), *args]  # fmt: skip


def fresh_catalog(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "curation.toml").write_text(CONFIG)
    subprocess.run(cli(root, "status"), check=True, capture_output=True, cwd=REPO)  # migrates and seeds
    return root / "catalog.sqlite"


def pad(db: Path, n: int, wnids: list[str]) -> None:
    """``n`` downloaded candidates, one image each, with random (hash-ordered) keys like real rows."""
    now = datetime(2026, 1, 1).isoformat(sep=" ")
    con = sqlite3.connect(db)
    try:
        for start in range(0, n, 50_000):
            numbers = range(start, min(n, start + 50_000))
            shas = [hashlib.sha256(f"pad-{i}".encode()).hexdigest() for i in numbers]
            con.executemany(
                "INSERT INTO images (sha256, path, width, height, format, bytes, mode, multi_class, created_at) "
                "VALUES (?, ?, 64, 64, 'JPEG', 800, 'RGB', 0, ?)",
                [(sha, f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg", now) for sha in shas],
            )
            con.executemany(
                "INSERT INTO candidates (wnid, source, url, status, attempts, image_sha256, created_at, updated_at) "
                "VALUES (?, 'urls', ?, 'downloaded', 1, ?, ?, ?)",
                [
                    (wnids[i % len(wnids)], f"http://127.0.0.1:9/pad/{i}.jpg", sha, now, now)
                    for i, sha in zip(numbers, shas, strict=True)
                ],
            )
            con.commit()
    finally:
        con.close()


def crawl_seconds(root: Path, listing: Path) -> float:
    done = subprocess.run(cli(root, "crawl", "--urls", str(listing)), check=True, capture_output=True, text=True,
                          cwd=REPO)  # fmt: skip
    return float(re.search(r"crawl done in ([\d.]+)s", done.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pad", type=int, default=300_000, help="synthetic rows in the padded catalog")
    parser.add_argument("--new", type=int, default=5000, help="URLs crawled into each catalog")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    body = tiny_jpeg()
    server = ImageServer(lambda i: body)
    wnids = class_wnids()
    try:
        with tempfile.TemporaryDirectory(prefix="crawl-growth-") as tmp:
            work = Path(tmp)
            listing = work / "new.csv"
            listing.write_text("url,wnid\n" + "".join(f"{server.base}/img/{i}.jpg,{wnids[i % len(wnids)]}\n"
                                                      for i in range(args.new)))  # fmt: skip
            empty = fresh_catalog(work / "empty-template")
            padded = fresh_catalog(work / "padded-template")
            pad(padded, args.pad, wnids)
            times: dict[str, list[float]] = {"empty": [], "padded": []}
            for run in range(args.repeat):
                for label, template in (("empty", empty), ("padded", padded)):
                    root = work / f"{label}-{run}"
                    root.mkdir()
                    shutil.copy(template.parent / "curation.toml", root)
                    shutil.copy(template, root / "catalog.sqlite")
                    times[label].append(crawl_seconds(root, listing))
                    shutil.rmtree(root)
    finally:
        server.close()
    per_item = {label: [t / args.new * 1e3 for t in ts] for label, ts in times.items()}
    for label, ms in per_item.items():
        rows = 0 if label == "empty" else args.pad
        print(f"{label:>6} ({rows:,} rows): {statistics.median(ms):.3f} ms/URL (range {min(ms):.3f}-{max(ms):.3f})")
    ratio = statistics.median(per_item["padded"]) / statistics.median(per_item["empty"])
    print(f"padded / empty: x{ratio:.2f} per URL ({args.new:,} new URLs, median of {args.repeat})")


if __name__ == "__main__":
    main()
