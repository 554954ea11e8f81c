"""Measure which Hamming thresholds catch edited copies of real photos without merging distinct ones.

Every photo of ``../shared/images`` gets nine edited copies (the kinds a crawl meets: resized,
re-encoded at low JPEG quality, cropped by 2 % and 5 % per side, rotated by 1° and 3°,
colour-jittered, watermarked, mirrored). Positives are (photo, its copy) pairs; negatives are every pair of distinct photos plus
every copy against every other photo. For each rule and threshold the script prints the recall per
edit kind, the false matches among the negatives, their rate per pair and the precision.

    .venv/bin/python benchmarks/dedup_thresholds.py [--limit N] [--max-threshold T]
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


def _flip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


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
    "flip": (_flip, 90),
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
    """(n, 4) uint64: phash, dhash, phash_mirror, dhash_mirror."""
    return np.array([[h.phash, h.dhash, h.phash_mirror, h.dhash_mirror] for h in hashes], dtype=np.uint64)


def pair_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, ...]:
    """Distances of rows of ``a`` to rows of ``b`` (broadcast): pHash, dHash, and a's mirror's pHash, dHash."""
    d = [np.bitwise_count(a[..., col] ^ b[..., src]).astype(np.int8) for col, src in ((0, 0), (1, 1), (2, 0), (3, 1))]
    return tuple(d)


RULES: dict[str, Callable[[tuple[np.ndarray, ...], int], np.ndarray]] = {
    "pHash": lambda d, t: d[0] <= t,
    "pHash+mirror": lambda d, t: (d[0] <= t) | (d[2] <= t),
    "dHash+mirror": lambda d, t: (d[1] <= t) | (d[3] <= t),
    "pHash+mirror AND dHash<=t+4": lambda d, t: ((d[0] <= t) & (d[1] <= t + 4)) | ((d[2] <= t) & (d[3] <= t + 4)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    parser.add_argument("--max-threshold", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

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

    # Positives: each copy against its photo. The copy is the query, so its mirror hashes are used.
    positives = {name: pair_distances(_as_array([r[1][name] for r in results]), originals) for name in VARIANTS}
    # Negatives: distinct photo pairs (each query photo against every other), and copies against other photos.
    upper = np.triu_indices(n, k=1)
    neg_parts: list[tuple[np.ndarray, ...]] = []
    full = pair_distances(originals[:, None, :], originals[None, :, :])
    neg_parts.append(tuple(d[upper] for d in full))
    off_diagonal = ~np.eye(n, dtype=bool)
    for name in VARIANTS:
        copies = _as_array([r[1][name] for r in results])
        full = pair_distances(copies[:, None, :], originals[None, :, :])
        neg_parts.append(tuple(d[off_diagonal] for d in full))
    negatives = tuple(np.concatenate([part[k] for part in neg_parts]) for k in range(4))
    n_neg = len(negatives[0])
    n_pos = n * len(VARIANTS)
    print(f"positives: {n_pos} (photo, edited copy) pairs; negatives: {n_neg:,} pairs of distinct photos\n")

    for rule_name, rule in RULES.items():
        print(f"### {rule_name}\n")
        print("| t | " + " | ".join(VARIANTS) + " | recall | false pairs | per 1M pairs | precision |")
        print("|---:|" + "---:|" * (len(VARIANTS) + 4))
        for t in range(args.max_threshold + 1):
            recalls = [rule(positives[name], t).mean() for name in VARIANTS]
            tp = sum(int(rule(positives[name], t).sum()) for name in VARIANTS)
            fp = int(rule(negatives, t).sum())
            precision = tp / (tp + fp) if tp + fp else 1.0
            cells = " | ".join(f"{r:.3f}" for r in recalls)
            print(f"| {t} | {cells} | {tp / n_pos:.3f} | {fp} | {fp / n_neg * 1e6:.2f} | {precision:.4f} |")
        print()
    photo_pairs = pair_distances(originals[:, None, :], originals[None, :, :])
    nearest = np.triu(np.minimum(photo_pairs[0], photo_pairs[2]).astype(np.int16) + 1, k=1) - 1
    nearest[nearest < 0] = 99
    close = np.argsort(nearest, axis=None)[:10]
    print("the 10 closest pairs of distinct shared photos (pHash, either orientation):")
    for i, j in zip(*np.unravel_index(close, nearest.shape), strict=True):
        dists = ", ".join(
            f"{kind} {int(d[i, j])}"
            for kind, d in zip(("pHash", "dHash", "mirror pHash", "mirror dHash"), photo_pairs, strict=True)
        )
        print(f"  {photos[i].relative_to(SHARED_IMAGES)} ~ {photos[j].relative_to(SHARED_IMAGES)}: {dists}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
