"""A reference set's embeddings and their compressed search index, beside its hash file.

``<data_dir>/references/<NAME>/features/<model>--<weights>/`` holds the feature store (keyed by the
SHA-256 of each item's key, appended one chunk at a time: ``reference add`` resumes after a kill),
``vectors.npy`` (float16, one L2-normalised row per item of ``hashes.npz``, in its key order: the exact
vectors that re-rank what the index proposes, memory-mapped) and ``index.faiss`` + ``index.json``.

The index: below :data:`FLAT_BELOW` items none (an exact scan of ``vectors.npy``); above, faiss
PCA-256 + IVF + PQ32. Measured on the shared photos' Lite0 features plus synthetic vectors with their
mean and covariance (notes/semantic_dedup.md §5): 0.06-0.14 ms per query at 100k references with the
source in the top 10 for >= 0.996 of copies (nprobe 8-32), 51 MB of codes at 1.28 M, where an exact
fp32 scan needs 6.6 GB and ~2 h for 100k queries; HNSW (usearch) found 0.60-0.81 at 1.7-4.1 ms.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curation.features import FeatureStore, store_dir

FLAT_BELOW = 50_000  # items: an exact scan of 50k x 1280 fp16 rows is ~10 ms a query batch row
PCA_DIM = 256
PQ_BYTES = 32
NPROBE = 32
TRAIN_MAX = 200_000  # vectors that train PCA, IVF and PQ (enough for 4,096 lists at 39+ per list)
SCAN_BLOCK = 65_536  # reference rows per block of an exact scan
QUERY_BATCH = 1024  # queries per search call: 1,024 x 40 re-ranked 1280-d rows = 210 MB of fp32


def key_ids(keys: np.ndarray) -> list[str]:
    """The feature-store key of each reference item key (bytes): the SHA-256 of the key."""
    return [hashlib.sha256(bytes(k)).hexdigest() for k in keys]


def embed_dir(data_dir: Path, name: str, model: str, weights_hash: str) -> Path:
    """The folder of reference set ``name``'s features and index for one model's weights."""
    return store_dir(Path(data_dir) / "references" / name, model, weights_hash)


def reference_store(data_dir: Path, name: str, model: str, weights_hash: str) -> FeatureStore:
    """The feature store of reference set ``name`` for one model's weights (in :func:`embed_dir`)."""
    return FeatureStore(Path(data_dir) / "references" / name, model, weights_hash)


def normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def build(folder: Path, keys: np.ndarray, store: FeatureStore, seed: int = 0) -> int:
    """Write ``vectors.npy`` in the order of ``keys`` and the index; returns the rows embedded (items
    without a vector, unreadable ones, get a zero row that matches nothing). Streams: memory holds a
    block of :data:`SCAN_BLOCK` rows and the training sample, not the set (1.28 M x 1280 fp32 = 6.6 GB)."""
    ids = key_ids(keys)
    tmp = folder / "vectors.npy.tmp"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(keys), store.dim or 0))
    found = np.zeros(len(keys), bool)
    for start in range(0, len(keys), SCAN_BLOCK):
        have, vectors = store.get(ids[start : start + SCAN_BLOCK])
        out[start : start + len(have)] = normalise(vectors) * have[:, None]
        found[start : start + len(have)] = have
    out.flush()
    del out
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, folder / "vectors.npy")
    kind = "flat"
    if len(keys) >= FLAT_BELOW:
        kind = _build_ivfpq(folder, np.load(folder / "vectors.npy", mmap_mode="r"), found, seed)
    info = {"kind": kind, "items": len(keys), "embedded": int(found.sum()), "keys": keys_digest(keys)}
    (folder / "index.json.tmp").write_text(json.dumps(info))
    os.replace(folder / "index.json.tmp", folder / "index.json")
    return int(found.sum())


def keys_digest(keys: np.ndarray) -> str:
    """What an index was built over: the SHA-256 of its item keys in order (0.1 s at 1.28 M)."""
    return hashlib.sha256(b"\0".join(bytes(k) for k in keys)).hexdigest()


def is_current(folder: Path, keys: np.ndarray, embedded: int) -> bool:
    """Whether ``folder`` holds an index of exactly these keys with ``embedded`` vectors: a rerun of
    ``reference add`` with nothing new then skips the rebuild (minutes of training at 1.28 M)."""
    try:
        info = json.loads((folder / "index.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        info.get("keys") == keys_digest(keys) and info.get("embedded") == embedded and (folder / "vectors.npy").exists()
    )


def _build_ivfpq(folder: Path, vectors: np.ndarray, found: np.ndarray, seed: int) -> str:
    """Train on a sample of the embedded rows, add every row block by block, write ``index.faiss``."""
    import faiss

    rows = np.flatnonzero(found)
    if len(rows) > TRAIN_MAX:
        rows = np.sort(np.random.default_rng(seed).choice(rows, TRAIN_MAX, replace=False))
    lists = index_lists(len(vectors))
    index = train_ivfpq(np.asarray(vectors[rows], dtype=np.float32), lists, seed)
    for start in range(0, len(vectors), SCAN_BLOCK):
        index.add(np.asarray(vectors[start : start + SCAN_BLOCK], dtype=np.float32))
    faiss.write_index(index, str(folder / "index.faiss.tmp"))
    os.replace(folder / "index.faiss.tmp", folder / "index.faiss")
    return f"PCA{PCA_DIM},IVF{lists},PQ{PQ_BYTES}"


def index_lists(n: int) -> int:
    """IVF lists: ~4 sqrt(n), 64 to 4,096 (4,096 at 1.28 M, the notes' advice)."""
    return int(min(4096, max(64, 4 * np.sqrt(n))))


def train_ivfpq(sample: np.ndarray, lists: int, seed: int = 0):
    """A trained, empty PCA-256 + IVF(``lists``) + PQ32 inner-product index on (a sample of) ``sample``.

    Built by ``index_factory``, whose index owns its parts: assembling PCAMatrix, IndexIVFPQ and
    IndexPreTransform by hand and setting ``own_fields`` freed each part twice (C++ and the Python
    wrappers) and crashed the process with SIGSEGV when the index was dropped (reproduced at 6,000 rows)."""
    import faiss

    rng = np.random.default_rng(seed)
    if len(sample) > TRAIN_MAX:
        sample = sample[np.sort(rng.choice(len(sample), TRAIN_MAX, replace=False))]
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    spec = f"PCA{PCA_DIM},IVF{lists},PQ{PQ_BYTES}"
    index = faiss.index_factory(sample.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    index.train(sample)
    ivf.nprobe = NPROBE
    return index


@dataclass
class ReferenceIndex:
    """A built reference index: search proposes, the exact vectors re-rank."""

    vectors: np.ndarray  # float16 memmap, one normalised row per item (zero: not embedded)
    index: object | None  # faiss index, or None for an exact scan
    keys: np.ndarray | None = None  # the set's item keys (bytes), row by row
    base: Path | None = None  # the folder the keys are relative to

    @classmethod
    def open(cls, folder: Path) -> ReferenceIndex | None:
        """The index of ``folder``, or None when it was never built."""
        if not (folder / "index.json").exists():
            return None
        vectors = np.load(folder / "vectors.npy", mmap_mode="r", allow_pickle=False)
        index = None
        if (folder / "index.faiss").exists():
            import faiss

            index = faiss.read_index(str(folder / "index.faiss"), faiss.IO_FLAG_MMAP)
            faiss.extract_index_ivf(index).nprobe = NPROBE
        return cls(vectors, index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, exact cosines) of each query's top ``k``, best first (row -1: none), a batch of
        :data:`QUERY_BATCH` queries at a time (the re-rank holds batch x 2k exact rows)."""
        queries = normalise(queries)
        k = min(k, len(self.vectors))
        parts = [self._search(queries[s : s + QUERY_BATCH], k) for s in range(0, len(queries), QUERY_BATCH)]
        if not parts:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.index is None:
            return exact_top_k(queries, self.vectors, k)
        _, proposed = self.index.search(queries, min(2 * k, len(self.vectors)))  # re-ranked: twice k
        return rerank(queries, self.vectors, proposed, k)


def exact_top_k(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` rows of ``vectors`` (float16, may be memory-mapped) by inner product, block by block."""
    n = len(queries)
    best_rows, best = np.full((n, 0), -1, np.int64), np.zeros((n, 0), np.float32)
    for start in range(0, len(vectors), SCAN_BLOCK):
        block = np.asarray(vectors[start : start + SCAN_BLOCK], dtype=np.float32)
        scores = queries @ block.T
        take = min(k, scores.shape[1])
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        best_rows = np.concatenate([best_rows, part + start], axis=1)
        best = np.concatenate([best, np.take_along_axis(scores, part, axis=1)], axis=1)
        if best.shape[1] > k:
            keep = np.argpartition(-best, k - 1, axis=1)[:, :k]
            best_rows, best = np.take_along_axis(best_rows, keep, 1), np.take_along_axis(best, keep, 1)
    order = np.argsort(-best, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, 1), np.take_along_axis(best, order, 1)


def rerank(queries: np.ndarray, vectors: np.ndarray, proposed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact cosines of the proposed rows (-1: none), the top ``k`` kept, best first."""
    safe = np.where(proposed >= 0, proposed, 0)
    flat = np.unique(safe)
    exact = np.asarray(vectors[flat], dtype=np.float32)  # ascending reads of the mapped file
    position = np.searchsorted(flat, safe)
    scores = np.einsum("nd,nkd->nk", queries, exact[position])
    scores[proposed < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    rows = np.take_along_axis(proposed, order, 1)
    return rows, np.take_along_axis(scores, order, 1)
