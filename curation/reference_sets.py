"""Reference collections (ImageNet train/val, any folder of images) as compact hash files.

A set lives in ``<data_dir>/references/<NAME>/``: ``hashes.npz`` holds three arrays of equal
length, ``keys`` (UTF-8 paths relative to the folder), ``phash`` and ``dhash`` (``uint64``).
While a folder is hashed, results go to append-only ``chunks/chunk-NNNNNN.npz`` files, each
written to a temporary name and renamed, so a killed run loses at most one chunk in flight; a
rerun skips every path already in ``hashes.npz`` or a chunk, and at the end the chunks are merged
(duplicate keys dropped) into ``hashes.npz``. Hashing runs through the engine's executor (worker
processes here, a Ray cluster's CPUs with ``--engine ray``). The same file is what ``export``
writes and ``import`` reads, so a hashed ImageNet can be shared instead of hashed again.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from curation.catalog import Catalog, ReferenceSet, utcnow
from curation.engine import Executor, Sink, Task
from curation.errors import CurationError
from curation.hashing import hash_file

FORMAT = "curation-reference-hashes-v1"
# Images per hashing task: 32 x ~5 ms of hashing outweighs a task's scheduling cost (the process
# pool's chunk size before the engine seam).
HASH_BATCH = 32
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class ReferenceHashes:
    """The hashes of one reference set, in key order."""

    keys: np.ndarray  # bytes (dtype S): UTF-8 relative paths
    phash: np.ndarray  # uint64
    dhash: np.ndarray  # uint64

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class AddSummary:
    name: str
    total: int
    hashed_now: int
    failed: int
    resumed_from: int


def set_dir(data_dir: Path, name: str) -> Path:
    """The folder of reference set ``name``."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise CurationError(f"bad reference set name {name!r}: use letters, digits, '-' or '_'")
    return data_dir / "references" / name


def _write_npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> None:
    """Write an .npz atomically: to a temporary name, fsync, rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        (np.savez_compressed if compressed else np.savez)(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_hash_file(path: Path) -> ReferenceHashes:
    """Read and check a reference hash file (ours, or one exported by someone else)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" in data.files and str(data["format"]) != FORMAT:
                raise CurationError(f"{path}: unknown hash file format {str(data['format'])!r}, expected {FORMAT}")
            missing = {"keys", "phash", "dhash"} - set(data.files)
            if missing:
                raise CurationError(f"{path}: not a reference hash file (missing {', '.join(sorted(missing))})")
            keys, phash, dhash = data["keys"], data["phash"], data["dhash"]
    except FileNotFoundError:
        raise CurationError(f"hash file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise CurationError(f"{path}: not a readable .npz hash file ({exc})") from None
    if not (len(keys) == len(phash) == len(dhash)) or keys.ndim != 1:
        raise CurationError(f"{path}: keys, phash and dhash differ in length")
    if phash.dtype.kind not in "iu" or dhash.dtype.kind not in "iu" or phash.dtype.itemsize != 8:
        raise CurationError(f"{path}: phash and dhash must be 64-bit integers")
    if keys.dtype.kind == "U":
        keys = np.char.encode(keys, "utf-8")
    return ReferenceHashes(keys=keys.astype("S"), phash=phash.view(np.uint64), dhash=dhash.view(np.uint64))


def _merge(parts: Iterable[ReferenceHashes]) -> ReferenceHashes:
    parts = [p for p in parts if len(p)]
    if not parts:
        empty = np.zeros(0, dtype=np.uint64)
        return ReferenceHashes(np.zeros(0, dtype="S1"), empty, empty.copy())
    keys = np.concatenate([p.keys for p in parts])
    phash = np.concatenate([p.phash for p in parts])
    dhash = np.concatenate([p.dhash for p in parts])
    keys, first = np.unique(keys, return_index=True)  # sorted, each key once
    return ReferenceHashes(keys, phash[first], dhash[first])


def _save_hashes(path: Path, hashes: ReferenceHashes) -> None:
    _write_npz(path, compressed=True, format=np.array(FORMAT), keys=hashes.keys, phash=hashes.phash, dhash=hashes.dhash)


def list_images(root: Path) -> list[str]:
    """Image files under ``root`` (any depth), as sorted POSIX paths relative to it."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        base = Path(folder).relative_to(root)
        found.extend((base / f).as_posix() for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return sorted(found)


class ReferenceHashTask(Task):
    """Hashes a batch of (key, absolute path) on a worker: (key, phash, dhash, None) or (key, 0, 0,
    reason) per image; references are matched in their own orientation (2 hashed)."""

    def run(self, batch: list[tuple[str, str]]) -> list[tuple[str, int, int, str | None]]:
        records: list[tuple[str, int, int, str | None]] = []
        for key, path in batch:
            try:
                hashes = hash_file(path, orientations=2)
            except Exception as exc:  # noqa: BLE001 - any undecodable file is a per-item failure
                records.append((key, 0, 0, f"{type(exc).__name__}: {exc}"))
                continue
            records.append((key, hashes.phash, hashes.dhash, None))
        return records


def _done_chunks(chunk_dir: Path) -> list[Path]:
    return sorted(chunk_dir.glob("chunk-*.npz")) if chunk_dir.is_dir() else []


def read_image_list(path: Path) -> list[str]:
    """The image paths of a list file, one per line (relative ones to the list's folder)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CurationError(f"cannot read the image list {path}: {exc}") from None
    return sorted({line.strip() for line in lines if line.strip() and not line.startswith("#")})


def add_folder(
    catalog: Catalog,
    data_dir: Path,
    name: str,
    root: Path,
    workers: int = 2,
    chunk_size: int = 2000,
    executor: Executor | None = None,
) -> AddSummary:
    """Hash every image under the folder ``root`` (or named in the list file ``root``, one path a
    line) into reference set ``name`` on ``executor`` (default: ``workers`` local processes),
    resuming an earlier run."""
    if root.is_file():
        listed = read_image_list(root)
        base = root.parent
    elif root.is_dir():
        listed = list_images(root)
        base = root
    else:
        raise CurationError(f"reference folder or image list not found: {root}")
    folder = set_dir(data_dir, name)
    chunk_dir = folder / "chunks"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    for stale in chunk_dir.glob("*.tmp"):
        stale.unlink()
    with catalog.session() as session:
        row = session.get(ReferenceSet, name)
        if row is not None and row.root and Path(row.root) != root.resolve():
            raise CurationError(f"reference set {name!r} was made from {row.root}, not {root.resolve()}")
        if row is None:
            session.add(ReferenceSet(name=name, root=str(root.resolve()), hash_file=_relative(folder, data_dir)))
        elif row.root is None:
            row.root = str(root.resolve())

    hash_path = folder / "hashes.npz"
    done: set[bytes] = set()
    if hash_path.exists():
        done.update(read_hash_file(hash_path).keys.tolist())
    failures: list[tuple[str, str]] = []
    for chunk in _done_chunks(chunk_dir):
        with np.load(chunk, allow_pickle=False) as data:
            done.update(data["keys"].tolist())
            done.update(data["failed"].tolist())
            failures.extend(zip(np.char.decode(data["failed"]).tolist(), data["errors"].tolist(), strict=True))
    resumed_from = len(done)
    todo = [key for key in listed if key.encode() not in done]
    next_chunk = len(_done_chunks(chunk_dir)) + 1
    hashed_now = 0
    if todo:
        from tqdm import tqdm

        from curation.engine.local import LocalExecutor

        def write_chunk(records: list[tuple[str, int, int, str | None]]) -> None:
            nonlocal next_chunk
            good = [(key, ph, dh) for key, ph, dh, error in records if error is None]
            bad = [(key, error) for key, _, _, error in records if error is not None]
            failures.extend(bad)
            _write_npz(
                chunk_dir / f"chunk-{next_chunk:06d}.npz",
                keys=np.array([k.encode() for k, _, _ in good], dtype="S") if good else np.zeros(0, dtype="S1"),
                phash=np.array([ph for _, ph, _ in good], dtype=np.uint64),
                dhash=np.array([dh for _, _, dh in good], dtype=np.uint64),
                failed=np.array([k.encode() for k, _ in bad], dtype="S") if bad else np.zeros(0, dtype="S1"),
                errors=np.array([e for _, e in bad], dtype=str),
            )
            next_chunk += 1

        items = [(key, str((base / key).absolute())) for key in todo]  # workers have other cwds
        executor = executor or LocalExecutor()
        # One chunk file per chunk_size records, whatever the time (a killed run loses one chunk);
        # a batch that ran twice on a cluster (its worker died) is kept once.
        with Sink(write_chunk, key=lambda record: record[0], rows=chunk_size, seconds=math.inf) as sink:
            records = executor.map(ReferenceHashTask(), items, batch_size=HASH_BATCH, workers=max(1, workers))
            for record in tqdm(records, total=len(todo), desc=f"hashing {name}", unit="img", file=sys.stderr):
                if sink.add(record) and record[3] is None:  # add is False for a record seen before
                    hashed_now += 1

    parts = [read_hash_file(chunk) for chunk in _done_chunks(chunk_dir)]
    if hash_path.exists():
        parts.insert(0, read_hash_file(hash_path))
    merged = _merge(parts)
    _save_hashes(hash_path, merged)
    # Files that could not be decoded, with the reason; they are tried again on the next run.
    failed_list = "".join(f"{key}\t{error}\n" for key, error in sorted(failures))  # any order from the workers
    (folder / "failed.tsv").write_text(failed_list, encoding="utf-8")
    shutil.rmtree(chunk_dir)
    with catalog.session() as session:
        row = session.get(ReferenceSet, name)
        row.count = len(merged)
        row.complete = True
        row.hash_file = _relative(hash_path, data_dir)
        row.updated_at = utcnow()
    return AddSummary(name, len(merged), hashed_now, len(failures), resumed_from)


def _relative(path: Path, data_dir: Path) -> str:
    try:
        return path.resolve().relative_to(data_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def import_file(catalog: Catalog, data_dir: Path, name: str, source: Path) -> int:
    """Register the hash file ``source`` as reference set ``name``; returns its size."""
    hashes = _merge([read_hash_file(source)])
    folder = set_dir(data_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    hash_path = folder / "hashes.npz"
    _save_hashes(hash_path, hashes)
    with catalog.session() as session:
        row = session.get(ReferenceSet, name)
        if row is None:
            row = ReferenceSet(name=name, hash_file=_relative(hash_path, data_dir))
            session.add(row)
        row.root = None
        row.count = len(hashes)
        row.complete = True
        row.hash_file = _relative(hash_path, data_dir)
        row.updated_at = utcnow()
    return len(hashes)


def _registered(catalog: Catalog, name: str) -> ReferenceSet:
    with catalog.session() as session:
        row = session.get(ReferenceSet, name)
        known = session.scalars(select(ReferenceSet.name).order_by(ReferenceSet.name)).all()
    if row is None:
        raise CurationError(f"unknown reference set {name!r} (known: {', '.join(known) or 'none'})")
    if not row.complete:
        raise CurationError(
            f"reference set {name!r} is incomplete: rerun `curation dedup reference add {name} {row.root}`"
        )
    return row


def load(catalog: Catalog, data_dir: Path, name: str) -> ReferenceHashes:
    """The hashes of a complete, registered reference set."""
    row = _registered(catalog, name)
    path = Path(row.hash_file)
    return read_hash_file(path if path.is_absolute() else data_dir / path)


def export_file(catalog: Catalog, data_dir: Path, name: str, target: Path) -> int:
    """Copy the hash file of ``name`` to ``target``; returns its size."""
    hashes = load(catalog, data_dir, name)
    if target.suffix != ".npz":
        raise CurationError(f"export target must end in .npz: {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _save_hashes(target, hashes)
    return len(hashes)


def list_sets(catalog: Catalog) -> list[ReferenceSet]:
    """Every registered reference set, by name."""
    with catalog.session() as session:
        return list(session.scalars(select(ReferenceSet).order_by(ReferenceSet.name)))
