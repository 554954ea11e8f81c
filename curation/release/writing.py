"""Writing a release: the images read from the image store (a batch of GETs in flight ahead of the
writer), the metadata, the deterministic archive, all in a temporary folder renamed into place."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

from curation.errors import CurationError
from curation.release.metadata import manifest_row, write_metadata
from curation.release.selection import Item
from curation.release_card import check_wnid_folder
from curation.store.base import MissingObject
from curation.store.reader import ImageReader, ImageRef, Source, fetch_sources

JPEG_QUALITY = 95
ARCHIVE_MTIME = 0


def released_bytes(data: bytes, fmt: str) -> tuple[bytes, str]:
    """The bytes to release for an original image's bytes and the format it was converted from ('' if copied)."""
    from PIL import Image

    if fmt.upper() == "JPEG":
        with Image.open(io.BytesIO(data)) as im:
            orientation = im.getexif().get(0x0112, 1)
        if orientation == 1:
            return data, ""
    from curation.storage import open_rgb

    buffer = io.BytesIO()
    open_rgb(io.BytesIO(data)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), fmt.upper() if fmt.upper() != "JPEG" else "JPEG (EXIF-rotated)"


def write_release(
    items: list[Item], out_dir: Path, name: str, images: ImageReader, context: dict[str, Any]
) -> tuple[list[Item], dict[str, str]]:
    """Write the release under a temporary folder and rename it to ``out_dir``, the originals read
    from ``images``.

    Returns the written items and, per failed sha256, a one-line reason (missing, changed or
    unreadable image). Sets ``context["archive_sha256"]``.
    """
    from tqdm import tqdm

    for folder in sorted({i.file.split("/", 1)[0] for i in items}):
        check_wnid_folder(folder)
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CurationError(f"cannot create {parent}: {exc.strerror}") from None
    for stale in parent.glob(f".{out_dir.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    temp = parent / f".{out_dir.name}.partial-{os.getpid()}"
    root = temp / name
    root.mkdir(parents=True)
    written: list[Item] = []
    failures: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    try:
        refs = [images.ref(item.path) for item in items]
        sources = fetch_sources(refs)
        for item, ref, source in tqdm(
            zip(items, refs, sources, strict=True),
            total=len(items),
            desc="release",
            unit="img",
            file=sys.stderr,
            disable=None,
        ):
            try:
                data, converted_from = _checked(item, ref, source)
            except _Failed as exc:
                failures[item.sha256] = str(exc)
                continue
            target = root / item.file
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(data)
            written.append(item)
            rows.append(manifest_row(item, hashlib.sha256(data).hexdigest(), converted_from))
        if not written:
            raise CurationError("nothing released: every selected image failed to copy")
        write_metadata(root, written, rows, context)
        archive = temp / f"{name}.tar.gz"
        write_archive(root, archive)
        context["archive_sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
        (temp / f"{name}.tar.gz.sha256").write_text(f"{context['archive_sha256']}  {name}.tar.gz\n")
        _swap_into_place(temp, out_dir)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return written, failures


class _Failed(Exception):
    """One image left out of the release, with its one-line reason."""


def _checked(item: Item, ref: ImageRef, source: Source) -> tuple[bytes, str]:
    """The bytes to release for ``item`` from its fetched original; _Failed if it is missing,
    changed or unreadable."""
    if isinstance(source, MissingObject):
        raise _Failed(f"missing from the image store: {ref}")
    assert isinstance(source, bytes)  # refs fetch bytes (or their MissingObject)
    if hashlib.sha256(source).hexdigest() != item.sha256:
        raise _Failed(f"{ref} no longer matches its sha256")
    try:
        return released_bytes(source, item.format)
    except (OSError, ValueError) as exc:
        raise _Failed(f"cannot read {ref}: {exc}") from None


def _swap_into_place(temp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = out_dir.resolve().parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
        temp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        temp.rename(out_dir)


def write_archive(root: Path, archive: Path) -> None:
    """A byte-reproducible ``.tar.gz`` of ``root``: sorted entries, fixed mtime, owner and modes."""
    entries = sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix())
    with open(archive, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for path in [root, *entries]:
                info = tarfile.TarInfo(path.relative_to(root.parent).as_posix())
                info.mtime = ARCHIVE_MTIME
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if path.is_dir():
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.mode, info.size = 0o644, path.stat().st_size
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
