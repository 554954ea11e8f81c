"""Reference collections (ImageNet train/val, any folder of images) as compact hash files.

A set lives in ``<data_dir>/references/<NAME>/``: ``hashes.npz`` holds three arrays of equal
length, ``keys`` (UTF-8 paths relative to the folder), ``phash`` and ``dhash`` (``uint64``).
While a folder is hashed, results go to append-only ``chunks/chunk-NNNNNN.npz`` files, each
written to a temporary name and renamed, so a killed run loses at most one chunk in flight; a
rerun skips every path already in ``hashes.npz`` or a chunk, and at the end the chunks are merged
(duplicate keys dropped) into ``hashes.npz``. The same file is what ``export`` writes and
``import`` reads, so a hashed ImageNet can be shared instead of hashed again.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from sqlalchemy import select

from curation.catalog import Catalog, ReferenceSet, utcnow
from curation.errors import CurationError
from curation.hashing import hash_file

FORMAT = "curation-reference-hashes-v1"
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


def _hash_one(task: tuple[str, str]) -> tuple[str, int, int, str | None]:
    key, path = task
    try:
        hashes = hash_file(path, orientations=2)  # references are matched in their own orientation
    except Exception as exc:  # noqa: BLE001 - any undecodable file is a per-item failure
        return key, 0, 0, f"{type(exc).__name__}: {exc}"
    return key, hashes.phash, hashes.dhash, None


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
    catalog: Catalog, data_dir: Path, name: str, root: Path, workers: int = 2, chunk_size: int = 2000
) -> AddSummary:
    """Hash every image under the folder ``root`` (or named in the list file ``root``, one path a
    line) into reference set ``name``, resuming an earlier run."""
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

        keys: list[str] = []
        phash: list[int] = []
        dhash: list[int] = []
        bad: list[tuple[str, str]] = []

        def flush() -> None:
            nonlocal next_chunk, keys, phash, dhash, bad
            if not keys and not bad:
                return
            failures.extend(bad)
            _write_npz(
                chunk_dir / f"chunk-{next_chunk:06d}.npz",
                keys=np.array([k.encode() for k in keys], dtype="S") if keys else np.zeros(0, dtype="S1"),
                phash=np.array(phash, dtype=np.uint64),
                dhash=np.array(dhash, dtype=np.uint64),
                failed=np.array([k.encode() for k, _ in bad], dtype="S") if bad else np.zeros(0, dtype="S1"),
                errors=np.array([e for _, e in bad], dtype=str),
            )
            next_chunk += 1
            keys, phash, dhash, bad = [], [], [], []

        tasks = ((key, str(base / key)) for key in todo)
        with Pool(max(1, workers)) as pool:
            progress = tqdm(total=len(todo), desc=f"hashing {name}", unit="img", file=sys.stderr)
            for key, ph, dh, error in pool.imap(_hash_one, tasks, chunksize=32):
                if error is None:
                    keys.append(key)
                    phash.append(ph)
                    dhash.append(dh)
                    hashed_now += 1
                else:
                    bad.append((key, error))
                progress.update()
                if len(keys) + len(bad) >= chunk_size:
                    flush()
            flush()
            progress.close()

    parts = [read_hash_file(chunk) for chunk in _done_chunks(chunk_dir)]
    if hash_path.exists():
        parts.insert(0, read_hash_file(hash_path))
    merged = _merge(parts)
    _save_hashes(hash_path, merged)
    # Files that could not be decoded, with the reason; they are tried again on the next run.
    (folder / "failed.tsv").write_text("".join(f"{key}\t{error}\n" for key, error in failures), encoding="utf-8")
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
