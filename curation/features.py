"""Pooled pre-logit features of images, on disk beside the catalog, keyed by image SHA-256 and weights.

One folder per (model, weights hash) under ``<data_dir>/features/``: ``meta.json`` (model, weights
hash, dimension) and segments ``seg-NNNNNN.vec.npy`` (float16, n x dim) + ``seg-NNNNNN.keys.npy``
(S64 hex sha256). A segment is written to temporary names, fsynced and renamed, vectors first and
keys last: a segment exists once its keys file does, so a killed writer leaves at most a stray
``.tmp`` or an orphan vector file behind, never a half segment. Segments are only added (the
filter appends one per committed chunk); :meth:`FeatureStore.compact` merges many small ones into
one. Reads memory-map the vectors: a look-up touches only the rows it asks for.

fp16 loses nothing measurable: bf16 features are at cos >= 0.997 of fp32 (notes/semantic_dedup.md),
fp16 has 3 more mantissa bits. A model mismatch cannot mix features: another model or other weights
is another folder, so changing the model computes new features and keeps the old ones.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from curation.errors import CurationError

FORMAT = "curation-features-v1"
# Segments before a writer merges them into one: each look-up maps every segment's keys, and 1 M
# images in the filter's 512-image chunks would be ~2,000 segments.
COMPACT_AT = 64
COMPACT_BLOCK = 65_536  # rows a compaction holds at once (335 MB of float32 at 1280-d)
COMPACT_BYTES = 65_536 * 1280 * 4  # ... and at most this many bytes: a tile store's row is 9 x 1280


def store_dir(data_dir: Path, model: str, weights_hash: str, part: str = "") -> Path:
    """The folder of one model's features (the model name made safe for a file name); ``part``: a
    store of other vectors of the same images (``tiles``), in a folder of its own."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    return Path(data_dir) / "features" / (f"{safe}--{weights_hash}" + (f"--{part}" if part else ""))


def stored_models(data_dir: Path) -> list[str]:
    """``model@weights`` of every feature folder present (for the one-line mismatch note)."""
    found = []
    for meta in sorted((Path(data_dir) / "features").glob("*/meta.json")):
        try:
            info = json.loads(meta.read_text())
            if not info.get("part"):
                found.append(f"{info['model']}@{info['weights_hash']}")
        except (OSError, ValueError, KeyError):
            continue
    return found


def _write_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FeatureStore:
    """The features of one (model, weights hash): append-only, crash-safe, memory-mapped. ``part``:
    another store of the same images (``tiles``: a row holds the nine tile vectors of one image)."""

    def __init__(self, data_dir: Path, model: str, weights_hash: str, part: str = "") -> None:
        self.model, self.weights_hash, self.part = model, weights_hash, part
        self.folder = store_dir(data_dir, model, weights_hash, part)
        self.dim: int | None = None
        meta = self.folder / "meta.json"
        if meta.exists():
            info = json.loads(meta.read_text())
            if info.get("format") != FORMAT or info.get("weights_hash") != weights_hash or info.get("part", "") != part:
                raise CurationError(f"{self.folder}: not a feature store of {model}@{weights_hash}")
            self.dim = int(info["dim"])
        self._keys: np.ndarray | None = None  # sorted S64
        self._where: np.ndarray | None = None  # (segment number, row) of each sorted key

    def _segments(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(p.name[4:10]) for p in self.folder.glob("seg-*.keys.npy"))

    def _load_keys(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is None:
            keys, where = [np.zeros(0, "S64")], [np.zeros((0, 2), np.int64)]
            for seg in self._segments():
                part = np.load(self.folder / f"seg-{seg:06d}.keys.npy", allow_pickle=False)
                keys.append(part)
                where.append(np.stack([np.full(len(part), seg), np.arange(len(part))], axis=1))
            all_keys, all_where = np.concatenate(keys), np.concatenate(where)
            all_keys, first = np.unique(all_keys, return_index=True)  # a key twice (crash in compact): the first
            self._keys, self._where = all_keys, all_where[first]
        return self._keys, self._where

    def __len__(self) -> int:
        return len(self._load_keys()[0])

    def has(self, shas: list[str]) -> np.ndarray:
        """Whether each sha256 has a stored vector."""
        keys, _ = self._load_keys()
        wanted = np.array(shas, dtype="S64")
        if not len(keys):
            return np.zeros(len(wanted), bool)
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return keys[at] == wanted

    def get(self, shas: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, float32 vectors: zero rows where not found) of these sha256s."""
        keys, where = self._load_keys()
        found = self.has(shas)
        out = np.zeros((len(shas), self.dim or 0), np.float32)
        if not found.any():
            return found, out
        rows = np.searchsorted(keys, np.array(shas, dtype="S64")[found])
        located = where[rows]
        positions = np.flatnonzero(found)
        for seg in np.unique(located[:, 0]).tolist():
            vectors = np.load(self.folder / f"seg-{seg:06d}.vec.npy", mmap_mode="r", allow_pickle=False)
            mine = located[:, 0] == seg
            order = np.argsort(located[mine, 1])  # ascending reads of the mapped file
            out[positions[mine][order]] = vectors[located[mine, 1][order]]
        return found, out

    def segments(self):
        """(keys, memory-mapped float16 vectors) of each segment, oldest first."""
        for seg in self._segments():
            keys = np.load(self.folder / f"seg-{seg:06d}.keys.npy", allow_pickle=False)
            yield keys, np.load(self.folder / f"seg-{seg:06d}.vec.npy", mmap_mode="r", allow_pickle=False)

    def append(self, shas: list[str], vectors: np.ndarray) -> int:
        """Store the vectors of the sha256s not stored yet (one new segment); returns how many."""
        if not len(shas):
            return 0
        vectors = np.asarray(vectors)
        if self.dim is None:
            self._write_meta(vectors.shape[1])
        elif vectors.shape[1] != self.dim:
            raise CurationError(f"{self.folder}: features of {vectors.shape[1]} values, the store holds {self.dim}")
        keys = np.array(shas, dtype="S64")
        keys, first = np.unique(keys, return_index=True)
        new = ~self.has(list(keys))
        if not new.any():
            return 0
        segments = self._segments()
        seg = (segments[-1] if segments else 0) + 1
        self._write_segment(seg, keys[new], vectors[first[new]].astype(np.float16))
        if len(segments) + 1 >= COMPACT_AT:
            self.compact()
        return int(new.sum())

    def _write_meta(self, dim: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        info = {"format": FORMAT, "model": self.model, "weights_hash": self.weights_hash, "dim": dim}
        if self.part:
            info["part"] = self.part
        tmp = self.folder / "meta.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.folder / "meta.json")
        self.dim = dim

    def _write_segment(self, seg: int, keys: np.ndarray, vectors: np.ndarray) -> None:
        _write_npy(self.folder / f"seg-{seg:06d}.vec.npy", vectors)
        _write_npy(self.folder / f"seg-{seg:06d}.keys.npy", keys)  # last: the segment now exists
        self._keys = self._where = None

    def compact(self) -> None:
        """Merge every segment into one new one, then drop the old ones (a crash in between leaves
        keys twice, read once). Streams :data:`COMPACT_BLOCK` rows (:data:`COMPACT_BYTES`) at a time: a reference set of
        1.28 M Lite0 vectors would otherwise be read whole into 6.6 GB of float32."""
        segments = self._segments()
        if len(segments) < 2:
            return
        keys, _ = self._load_keys()
        seg = segments[-1] + 1
        path = self.folder / f"seg-{seg:06d}.vec.npy"
        tmp = path.with_name(path.name + ".tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(keys), self.dim or 0))
        block = max(1, min(COMPACT_BLOCK, COMPACT_BYTES // (4 * (self.dim or 1))))
        for start in range(0, len(keys), block):
            out[start : start + block] = self.get(list(keys[start : start + block].astype(str)))[1]
        out.flush()
        del out
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _write_npy(self.folder / f"seg-{seg:06d}.keys.npy", keys)  # last: the segment now exists
        self._keys = self._where = None
        for seg in segments:
            (self.folder / f"seg-{seg:06d}.keys.npy").unlink()  # keys first: never a segment without vectors
            (self.folder / f"seg-{seg:06d}.vec.npy").unlink(missing_ok=True)
