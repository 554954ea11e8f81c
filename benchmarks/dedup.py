"""Dedup benchmark: the Hamming index against brute force at ImageNet scale, and hashing speed.

Part 1 — 1,281,167 reference codes (ImageNet-train size) and 100,000 queries, searched at the
default pHash radius. The codes are random 64-bit integers with exactly 32 bits set, like real
pHashes (imagehash thresholds at the median, so half the bits are 1); 1 % of the queries are
planted near-copies of reference codes. Brute force (numpy XOR + ``bitwise_count`` over all
references, per query) runs in the same process on a subset of the queries and is extrapolated
linearly (it does the same work for every query); the index's answers on that subset must equal
brute force's.

Part 3 (``--rerun N [--stress]``) — a dedup rerun after adding 100 images to a catalog of N hashed images
(synthetic hash rows, 1 % of them near-copies of 1,000 others, and 10 % of each 100 new ones; with
``--stress`` all of them copies of 1,500 others), against the first, full dedup of the same catalog:
median and range of ``--repeats`` reruns, in one process.

Part 2 — images/s for hashing real JPEGs from ``../shared/images``: our draft-mode decode
(``curation.hashing.hash_file``: pHash + dHash of the image and of its mirror, and of all eight
orientations as ``--orientations 8`` stores) against plain ``imagehash`` pHash + dHash on full
decodes, one process each.

    .venv/bin/python benchmarks/dedup.py                       # full size
    .venv/bin/python benchmarks/dedup.py --references 200000 --queries 10000   # quick
    .venv/bin/python benchmarks/dedup.py --rerun 100000        # part 3 only

Part 4 (``--leak``) — the embedding matcher at ImageNet scale: a leak check of 100,000 queries against
1,281,167 reference embeddings (index search, verification, memory, embedding core-hours) and a +100
rerun with verification; ``benchmarks/dedup_leak.py`` takes the other options (``--leak --help``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from curation.dedup import DEFAULT_MAX_DISTANCE  # noqa: E402
from curation.hamming_index import HammingIndex, brute_force_search  # noqa: E402

SHARED_IMAGES = REPO.parent / "shared" / "images"


def balanced_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 64-bit codes with exactly 32 bits set, as uint64."""
    parts = []
    for begin in range(0, n, 100_000):
        keys = rng.random((min(100_000, n - begin), 64))
        bits = keys <= np.partition(keys, 31, axis=1)[:, 31:32]  # the 32 smallest of each row
        parts.append(np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64))
    return np.concatenate(parts)


def plant_copies(rng: np.random.Generator, queries: np.ndarray, references: np.ndarray, radius: int) -> None:
    """Turn 1 % of the queries into copies of random references with up to ``radius`` bits swapped
    in pairs (keeping 32 bits set)."""
    n = len(queries) // 100
    chosen = rng.choice(len(references), size=n, replace=False)
    for i, ref in enumerate(references[chosen]):
        bits = np.unpackbits(np.array([ref], dtype=">u8").view(np.uint8))
        ones, zeros = np.flatnonzero(bits), np.flatnonzero(bits == 0)
        swaps = int(rng.integers(0, radius // 2 + 1))
        bits[rng.choice(ones, swaps, replace=False)] = 0
        bits[rng.choice(zeros, swaps, replace=False)] = 1
        queries[i] = np.packbits(bits).view(">u8")[0]


def as_pairs(result: tuple[np.ndarray, ...]) -> set[tuple[int, int, int]]:
    return set(zip(*(col.tolist() for col in result), strict=True))


def bench_index(n_refs: int, n_queries: int, n_brute: int, radius: int) -> None:
    rng = np.random.default_rng(2026)
    references = balanced_codes(rng, n_refs)
    queries = balanced_codes(rng, n_queries)
    plant_copies(rng, queries, references, radius)
    print(f"## Hamming range search: {n_refs:,} references, {n_queries:,} queries, radius {radius}\n")

    start = time.perf_counter()
    index = HammingIndex(references, radius)
    build = time.perf_counter() - start
    start = time.perf_counter()
    found = index.search(queries)
    search = time.perf_counter() - start

    subset = queries[:n_brute]
    start = time.perf_counter()
    brute = brute_force_search(references, subset, radius)
    brute_subset = time.perf_counter() - start
    brute_total = brute_subset * n_queries / n_brute
    in_subset = found[0] < n_brute
    assert as_pairs(tuple(col[in_subset] for col in found)) == as_pairs(brute), "index and brute force disagree"

    blocks = ", ".join(
        f"{bits} bits/{flips} flips" for (_shift, bits), flips in zip(index.blocks, index.flips, strict=True)
    )
    print("| | seconds | per query |\n|---|---:|---:|")
    print(f"| index build ({blocks}) | {build:.2f} | |")
    print(f"| index search, {n_queries:,} queries | {search:.2f} | {search / n_queries * 1e3:.3f} ms |")
    print(f"| index build + search | {build + search:.2f} | |")
    print(
        f"| brute force, {n_brute:,} queries measured, × {n_queries / n_brute:.0f} | {brute_total:.1f} "
        f"| {brute_subset / n_brute * 1e3:.3f} ms |"
    )
    print(f"\nmatches found: {len(found[0]):,} (planted: {n_queries // 100:,}); identical to brute force on the subset")
    print(
        f"speed-up, search only: {brute_total / search:.1f}×; build + search: {brute_total / (build + search):.1f}×\n"
    )


def bench_hashing(n_images: int) -> None:
    for folder in ("imagenet_samples", "imagenet_val"):
        photos = sorted((SHARED_IMAGES / folder).glob("*.JPEG"))[:n_images]
        blobs = [p.read_bytes() for p in photos]  # from memory: measure decode + hash, not the disk
        _bench_hashing_blobs(folder, blobs)


def _bench_hashing_blobs(folder: str, blobs: list[bytes]) -> None:
    import imagehash
    from PIL import Image

    from curation.hashing import hash_file, load_for_hashing

    def plain(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
        imagehash.phash(rgb)
        imagehash.dhash(rgb)

    def draft_two(data: bytes) -> None:
        grey = load_for_hashing(data)
        imagehash.phash(grey)
        imagehash.dhash(grey)

    pixels = []
    for data in blobs:
        with Image.open(io.BytesIO(data)) as img:
            pixels.append(img.width * img.height)
    mean_kb = sum(map(len, blobs)) / len(blobs) / 1e3
    print(f"## Hashing {len(blobs)} real JPEGs of {folder}/ ({mean_kb:.0f} KB, {np.mean(pixels) / 1e6:.2f} Mpx mean)\n")
    print("| method (one process, files in memory, best of 3) | images/s | vs plain |\n|---|---:|---:|")
    plain_rate = 0.0
    for name, fn in (
        ("plain imagehash on full decodes: pHash + dHash", plain),
        ("draft decode: pHash + dHash (same work)", draft_two),
        (
            "draft decode, `curation.hashing.hash_file`: pHash + dHash + both mirrored",
            partial(hash_file, orientations=2),
        ),
        ("draft decode, `hash_file`: pHash + dHash in all 8 orientations", partial(hash_file, orientations=8)),
    ):
        fn(blobs[0])
        best = float("inf")
        for _round in range(3):  # best of three: the machine is shared
            start = time.perf_counter()
            for data in blobs:
                fn(data)
            best = min(best, time.perf_counter() - start)
        rate = len(blobs) / best
        plain_rate = plain_rate or rate
        print(f"| {name} | {rate:.0f} | {rate / plain_rate:.2f}× |")
    print()


def _synthetic_rows(
    rng: np.random.Generator, start: int, n: int, pool: np.ndarray | None, share: float = 0.01
) -> list[dict]:
    """``n`` Image + hash rows; a ``share`` of them are copies (a few bits apart) of rows of ``pool``."""
    from curation.hashing import to_signed

    codes = balanced_codes(rng, 2 * n).reshape(n, 2)
    dhash = rng.integers(0, 2**63, size=(n, 2), dtype=np.int64)
    if pool is not None and len(pool):  # (pHash, dHash) rows: the copies differ in 2 bits of each
        planted = rng.choice(n, size=max(1, int(n * share)), replace=False)
        originals = pool[rng.choice(len(pool), size=len(planted))]
        codes[planted] = (originals[:, 0] ^ np.uint64(0b101))[:, None]
        dhash[planted] = (originals[:, 1].astype(np.int64) ^ 0b11)[:, None]
    rows = []
    for k in range(n):
        sha = hashlib.sha256(f"bench {start + k}".encode()).hexdigest()
        rows.append(
            {
                "sha256": sha,
                "phash": to_signed(int(codes[k, 0])),
                "dhash": int(dhash[k, 0]),
                "phash_mirror": to_signed(int(codes[k, 1])),
                "dhash_mirror": int(dhash[k, 1]),
            }
        )
    return rows


def _add_rows(catalog, rows: list[dict]) -> None:
    from sqlalchemy import insert

    from curation import catalog as cat

    with catalog.session() as session:
        for begin in range(0, len(rows), 20_000):
            part = rows[begin : begin + 20_000]
            session.execute(
                insert(cat.Image),
                [
                    {"sha256": r["sha256"], "path": "x.jpg", "width": 64, "height": 64, "format": "JPEG", "bytes": 1}
                    for r in part
                ],
            )
            session.execute(insert(cat.PerceptualHash), part)


def bench_rerun(n: int, new: int, repeats: int, stress: bool = False) -> None:
    """A dedup rerun with ``new`` images against a catalog of ``n``, vs the first full run. With
    ``stress``, every image (the new ones too) is a copy of one of 1,500 seeds: clusters of n / 1,500,
    as in ``benchmarks/scale.py --shapes stress``."""
    import statistics
    import tempfile

    from curation import catalog as cat
    from curation.dedup import DEFAULT_DHASH_MARGIN, run_stage

    rng = np.random.default_rng(11)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        catalog = cat.open_catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
        n_seeds, share = (1500, 1.0) if stress else (1000, 0.01)
        seeds = _synthetic_rows(rng, 0, n_seeds, None)
        pool = np.array([(int(r["phash"]) % 2**64, r["dhash"] % 2**64) for r in seeds], dtype=np.uint64)
        _add_rows(catalog, seeds + _synthetic_rows(rng, n_seeds, n - n_seeds, pool, share))

        lines = []

        def dedup() -> float:
            start = time.perf_counter()
            summary = run_stage(catalog, data_dir, DEFAULT_MAX_DISTANCE, DEFAULT_DHASH_MARGIN, [], workers=1)
            lines.append(summary.line())
            return time.perf_counter() - start

        full = dedup()
        reruns = []
        for round_ in range(repeats):
            _add_rows(catalog, _synthetic_rows(rng, n + round_ * new, new, pool, share=1.0 if stress else 0.1))
            reruns.append(dedup())
        catalog.engine.dispose()
    print(f"{lines[0]}\n{lines[-1]}\n")
    median = statistics.median(reruns)
    print(f"## Dedup rerun: +{new} images into {n:,} hashed images ({repeats} reruns)\n")
    print(f"first (full) dedup: {full:.2f} s")
    print(
        f"rerun +{new}: median {median:.3f} s (range {min(reruns):.3f}-{max(reruns):.3f}); "
        f"{full / median:.1f}x faster than the full run\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--leak" in argv:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from dedup_leak import main as leak_main

        return leak_main([a for a in argv if a != "--leak"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=1_281_167)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--brute-queries", type=int, default=2_000, help="queries brute force really runs")
    parser.add_argument("--radius", type=int, default=DEFAULT_MAX_DISTANCE)
    parser.add_argument("--images", type=int, default=200, help="real JPEGs to hash from each shared folder")
    parser.add_argument("--rerun", type=int, default=0, help="part 3 only: hashed images in the catalog")
    parser.add_argument("--new", type=int, default=100, help="images added before each rerun")
    parser.add_argument("--repeats", type=int, default=3, help="reruns measured")
    parser.add_argument("--stress", action="store_true", help="part 3: every image a copy of one of 1,500 seeds")
    parser.add_argument("--leak", action="store_true", help="part 4; the other options: benchmarks/dedup_leak.py")
    args = parser.parse_args(argv)
    if args.rerun:
        bench_rerun(args.rerun, args.new, args.repeats, args.stress)
        return 0
    bench_index(args.references, args.queries, min(args.brute_queries, args.queries), args.radius)
    bench_hashing(args.images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
