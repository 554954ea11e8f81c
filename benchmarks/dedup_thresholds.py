"""Measure which rules catch edited copies of real photos without merging distinct ones.

By default: the hash rule alone, embedding proposals + geometric verification alone, and both, on
the edit families of ``benchmarks/dedup_edits.py`` (crops, turns, pads, frames, shared overlays,
tilt, chains, collages; ``benchmarks/dedup_matchers.py``):

    .venv/bin/python benchmarks/dedup_thresholds.py [--pool 1500] [--photos 40] [--k 20] [--seed 0]

With ``--sweep``, the Hamming threshold sweep below.

Every photo of ``../shared/images`` gets thirteen edited copies (the kinds a crawl meets: resized,
re-encoded at low JPEG quality, cropped by 2 % and 5 % per side, rotated by 1° and 3°,
colour-jittered, watermarked, mirrored, turned by 90°, 180° and 270°, flipped upside down).
Positives are (photo, its copy) pairs; negatives are every pair of distinct photos plus every copy
against every other photo. As in ``curation dedup``, every image is a query against every other's
plain hashes, so a pair matches when either of them, in one of its queried orientations, matches
the other. For each rule and threshold the script prints the recall per edit kind, the false matches
among the negatives, their rate per pair and the precision.

    .venv/bin/python benchmarks/dedup_thresholds.py --sweep [--limit N] [--max-threshold T]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation.hashing import ImageHashes, hash_file  # noqa: E402

DHASH_MARGIN = 4

SHARED_IMAGES = REPO.parent / "shared" / "images"


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def _resize(img: Image.Image) -> Image.Image:
    return img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.LANCZOS)


def _crop(fraction: float) -> Callable[[Image.Image], Image.Image]:
    def crop(img: Image.Image) -> Image.Image:
        dx, dy = round(img.width * fraction), round(img.height * fraction)
        return img.crop((dx, dy, img.width - dx, img.height - dy))

    return crop


def _rotate(degrees: float) -> Callable[[Image.Image], Image.Image]:
    def rotate(img: Image.Image) -> Image.Image:
        return img.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=False)

    return rotate


def _jitter(img: Image.Image) -> Image.Image:
    img = ImageEnhance.Brightness(img).enhance(1.15)
    img = ImageEnhance.Contrast(img).enhance(0.85)
    return ImageEnhance.Color(img).enhance(1.3)


def _watermark(img: Image.Image) -> Image.Image:
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = max(10, base.width // 12)
    font = ImageFont.load_default(size=size)
    draw.text((base.width * 0.08, base.height * 0.62), "© stockphotos.example", font=font, fill=(255, 255, 255, 150))
    logo = max(8, base.width // 10)
    draw.rectangle((base.width - logo - 4, 4, base.width - 4, 4 + logo // 2), fill=(20, 60, 200, 255))
    return Image.alpha_composite(base, layer)


def _transpose(method: Image.Transpose) -> Callable[[Image.Image], Image.Image]:
    def transpose(img: Image.Image) -> Image.Image:
        return img.transpose(method)

    return transpose


# name -> (edit, JPEG quality of the saved copy)
VARIANTS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    "resize": (_resize, 90),
    "jpeg_q15": (lambda img: img, 15),
    "crop_2pct": (_crop(0.02), 90),
    "crop_5pct": (_crop(0.05), 90),
    "rotate_1deg": (_rotate(1), 90),
    "rotate_3deg": (_rotate(3), 90),
    "color_jitter": (_jitter, 90),
    "watermark": (_watermark, 90),
    "flip": (_transpose(Image.Transpose.FLIP_LEFT_RIGHT), 90),
    "rot90": (_transpose(Image.Transpose.ROTATE_90), 90),
    "rot180": (_transpose(Image.Transpose.ROTATE_180), 90),
    "rot270": (_transpose(Image.Transpose.ROTATE_270), 90),
    "vflip": (_transpose(Image.Transpose.FLIP_TOP_BOTTOM), 90),
}


def variant_bytes(path: Path) -> dict[str, bytes]:
    """The edited copies of one photo, as JPEG files."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    return {name: _jpeg(edit(rgb), quality) for name, (edit, quality) in VARIANTS.items()}


def shared_photos(limit: int | None = None) -> list[Path]:
    """The real photos of the shared folder (samples first), at most ``limit``."""
    paths = sorted((SHARED_IMAGES / "imagenet_samples").glob("*.JPEG")) + sorted(
        (SHARED_IMAGES / "imagenet_val").glob("*.JPEG")
    )
    return paths[:limit] if limit else paths


def _hash_photo(path: Path) -> tuple[ImageHashes, dict[str, ImageHashes]]:
    return hash_file(path), {name: hash_file(data) for name, data in variant_bytes(path).items()}


def _as_array(hashes: list[ImageHashes]) -> np.ndarray:
    """(n, 16) uint64: pHash, dHash of each of the eight orientations (image, mirror, then the others)."""
    return np.array([h.orientation_row() for h in hashes], dtype=np.uint64)


def _orientation_distances(a: np.ndarray, b: np.ndarray, orientations: int) -> tuple[np.ndarray, np.ndarray]:
    """pHash and dHash distances of each queried orientation of ``a`` to the plain hashes of ``b``
    (broadcast), stacked on a new first axis."""
    p = np.stack([np.bitwise_count(a[..., 2 * o] ^ b[..., 0]) for o in range(orientations)]).astype(np.int8)
    d = np.stack([np.bitwise_count(a[..., 2 * o + 1] ^ b[..., 1]) for o in range(orientations)]).astype(np.int8)
    return p, d


def _both_ways(rule: Callable[[np.ndarray, np.ndarray], np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.minimum(rule(a, b), rule(b, a))


def _levels(orientations: int, use: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A rule as the smallest threshold t at which it matches a pair (so "matches at t" is level <= t)."""

    def level(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        p, d = _orientation_distances(a, b, orientations)
        if use == "phash":
            return p.min(axis=0)
        if use == "dhash":
            return d.min(axis=0)
        return np.maximum(p, d - DHASH_MARGIN).min(axis=0)  # pHash <= t AND dHash <= t + margin

    return lambda a, b: _both_ways(level, a, b)


RULES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "pHash": _levels(1, "phash"),
    "pHash+mirror": _levels(2, "phash"),
    "dHash+mirror": _levels(2, "dhash"),
    f"pHash+mirror AND dHash<=t+{DHASH_MARGIN}": _levels(2, "both"),
    f"pHash AND dHash<=t+{DHASH_MARGIN}, 8 orientations": _levels(8, "both"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    parser.add_argument("--max-threshold", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sweep", action="store_true", help="the hash threshold sweep (13 edits)")
    parser.add_argument("--pool", type=int, default=600, help="shared photos in the catalog (seeded sample)")
    parser.add_argument("--photos", type=int, default=30, help="photos of the pool that get every edit")
    parser.add_argument("--k", type=int, default=20, help="embedding proposals per item (top-k by cosine)")
    parser.add_argument("--hardest", type=int, default=2000, help="closest distinct pairs by embedding to verify")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--edits", help="comma-separated edit families (default: all of dedup_edits.EDITS)")
    args = parser.parse_args(argv)
    if not args.sweep:
        from dedup_matchers import run

        edits = [e for e in (args.edits or "").split(",") if e] or None
        return run(args.pool, args.photos, args.k, args.hardest, args.seed, args.workers, shared_photos(), edits)

    from tqdm import tqdm

    photos = shared_photos(args.limit)
    start = time.perf_counter()
    with Pool(args.workers) as pool:
        results = list(
            tqdm(pool.imap(_hash_photo, photos, chunksize=8), total=len(photos), desc="variants", file=sys.stderr)
        )
    print(f"{len(photos)} photos × {len(VARIANTS)} edits hashed in {time.perf_counter() - start:.1f} s\n")
    originals = _as_array([r[0] for r in results])
    n = len(originals)

    copies = {name: _as_array([r[1][name] for r in results]) for name in VARIANTS}
    upper = np.triu_indices(n, k=1)
    off_diagonal = ~np.eye(n, dtype=bool)
    n_pos = n * len(VARIANTS)
    n_neg = len(upper[0]) + int(off_diagonal.sum()) * len(VARIANTS)
    print(f"positives: {n_pos} (photo, edited copy) pairs; negatives: {n_neg:,} pairs of distinct photos\n")

    for rule_name, rule in RULES.items():
        # Positives: each copy against its photo. Negatives: distinct photo pairs, copies against other photos.
        positives = {name: rule(copies[name], originals) for name in VARIANTS}
        neg_counts = np.bincount(rule(originals[:, None, :], originals[None, :, :])[upper], minlength=65)
        for name in VARIANTS:
            levels = rule(copies[name][:, None, :], originals[None, :, :])[off_diagonal]
            neg_counts += np.bincount(levels, minlength=65)
        false_at = np.cumsum(neg_counts)
        print(f"### {rule_name}\n")
        print("| t | " + " | ".join(VARIANTS) + " | recall | false pairs | per 1M pairs | precision |")
        print("|---:|" + "---:|" * (len(VARIANTS) + 4))
        for t in range(args.max_threshold + 1):
            recalls = [float((positives[name] <= t).mean()) for name in VARIANTS]
            tp = sum(int((positives[name] <= t).sum()) for name in VARIANTS)
            fp = int(false_at[t])
            precision = tp / (tp + fp) if tp + fp else 1.0
            cells = " | ".join(f"{r:.3f}" for r in recalls)
            print(f"| {t} | {cells} | {tp / n_pos:.3f} | {fp} | {fp / n_neg * 1e6:.2f} | {precision:.4f} |")
        print()
    eight = RULES[f"pHash AND dHash<=t+{DHASH_MARGIN}, 8 orientations"]
    nearest = eight(originals[:, None, :], originals[None, :, :]).astype(np.int16)
    nearest[np.tril_indices(n)] = 99
    close = np.argsort(nearest, axis=None)[:10]
    print(f"the 10 closest pairs of distinct shared photos (8 orientations, max(pHash, dHash - {DHASH_MARGIN})):")
    for i, j in zip(*np.unravel_index(close, nearest.shape), strict=True):
        dists = ", ".join(f"{name} {int(rule(originals[i], originals[j]))}" for name, rule in RULES.items())
        print(f"  {photos[i].relative_to(SHARED_IMAGES)} ~ {photos[j].relative_to(SHARED_IMAGES)}: {dists}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
