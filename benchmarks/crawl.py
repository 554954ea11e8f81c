"""Crawl benchmark: `curation crawl --urls` against img2dataset on the same local URL list.

A server on 127.0.0.1 answers every request after a fixed latency (default 50 ms) with a real
photo from ``../shared/images`` made unique per URL (a JPEG comment naming the URL), so every URL
is a distinct image. Both tools run as whole processes, one after the other, with the same
process and thread counts; the script prints wall time, images/s and the ratio.

    .venv/bin/python benchmarks/crawl.py                 # N = 3000, 16 threads
    .venv/bin/python benchmarks/crawl.py --n 300         # quick run while developing

img2dataset pins pandas < 3, so it lives in its own virtualenv (``make bench-crawl`` creates
``build/venv-bench``); pass ``--img2dataset PATH`` to use another install.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_IMAGES = REPO.parent / "shared" / "images"
DEFAULT_IMG2DATASET = REPO / "build" / "venv-bench" / "bin" / "img2dataset"


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a COM segment after SOI: a distinct file showing the same picture."""
    payload = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


class ImageServer:
    """Serves ``/img/<i>.jpg`` (``body(i)`` plus a comment naming the path) after ``latency`` s."""

    def __init__(self, body: Callable[[int], bytes], latency: float = 0.0) -> None:

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # like real servers; else keep-alive clients wait on delayed ACKs

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                time.sleep(latency)
                name = self.path.rsplit("/", 1)[-1]
                if not (self.path.startswith("/img/") and name.endswith(".jpg") and name[:-4].isdigit()):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = with_comment(body(int(name[:-4])), self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.request_queue_size = 1024
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def write_url_list(path: Path, base: str, wnids: list[str], n: int) -> Path:
    """A url,wnid CSV of ``n`` image URLs on ``base``, labelled round-robin with ``wnids``."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "wnid"])
        writer.writerows((f"{base}/img/{i}.jpg", wnids[i % len(wnids)]) for i in range(n))
    return path


def class_wnids() -> list[str]:
    with open(REPO / "data" / "classes" / "imagenet_a.csv", newline="") as fh:
        return [row["wnid"] for row in csv.DictReader(fh)]


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"benchmark: {cmd[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return elapsed


def run_curation(work: Path, listing: Path, threads: int) -> tuple[float, int]:
    config = work / "curation.toml"
    config.write_text(
        # Same shape as img2dataset's process: `threads` download threads plus one processing thread.
        f"[crawl]\nallow_private_hosts = true\nconcurrency = {threads}\nper_host = {threads}\ncheck_threads = 1\n"
        'contact = "benchmark@localhost"\n'
    )
    db = work / "catalog.sqlite"
    cmd = [sys.executable, "-m", "curation", "--config", str(config), "--db", str(db), "--data-dir",
           str(work / "curation-data"), "crawl", "--urls", str(listing)]  # fmt: skip
    elapsed = timed(cmd, REPO)
    con = sqlite3.connect(db)
    stored = con.execute("SELECT count(*) FROM candidates WHERE status = 'downloaded'").fetchone()[0]
    con.close()
    return elapsed, stored


def run_img2dataset(binary: Path, work: Path, listing: Path, threads: int) -> tuple[float, int]:
    out = work / "img2dataset-out"
    cmd = [str(binary), "--url_list", str(listing), "--input_format", "csv", "--url_col", "url",
           "--output_format", "files", "--output_folder", str(out), "--resize_mode", "no",
           "--processes_count", "1", "--thread_count", str(threads), "--retries", "0", "--timeout", "10",
           "--number_sample_per_shard", "100000", "--enable_wandb", "False"]  # fmt: skip
    elapsed = timed(cmd, work)
    return elapsed, sum(1 for _ in out.rglob("*.jpg"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="number of images (default 3000)")
    parser.add_argument("--threads", type=int, default=16, help="download threads for both tools (default 16)")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency in seconds (default 0.05)")
    parser.add_argument("--img2dataset", type=Path, default=None, help="img2dataset executable")
    args = parser.parse_args()
    binary = args.img2dataset or (
        Path(shutil.which("img2dataset")) if shutil.which("img2dataset") else DEFAULT_IMG2DATASET
    )
    if not binary.exists():
        sys.exit(f"benchmark: img2dataset not found at {binary}; run `make bench-crawl` once to install it")
    photos = [p.read_bytes() for p in sorted(SHARED_IMAGES.glob("*/*.JPEG"))]
    wnids = class_wnids()
    server = ImageServer(lambda i: photos[i % len(photos)], args.latency)
    try:
        with tempfile.TemporaryDirectory(prefix="crawl-bench-") as tmp:
            work = Path(tmp)
            listing = write_url_list(work / "urls.csv", server.base, wnids, args.n)
            ours, ours_ok = run_curation(work, listing, args.threads)
            theirs, theirs_ok = run_img2dataset(binary, work, listing, args.threads)
    finally:
        server.close()
    print(
        f"crawl benchmark: N={args.n} unique real images, {args.latency * 1000:.0f} ms latency, "
        f"1 process x {args.threads} threads, {len(photos)} source photos"
    )
    print(f"curation crawl --urls : {ours:7.2f} s wall, {args.n / ours:7.1f} images/s ({ours_ok} validated and stored)")
    print(f"img2dataset           : {theirs:7.2f} s wall, {args.n / theirs:7.1f} images/s ({theirs_ok} stored)")
    print(f"ratio (curation / img2dataset throughput): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
