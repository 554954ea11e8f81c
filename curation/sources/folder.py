"""The ``folder`` source: images already on disk, labelled by their folder, name or a manifest.

Three layouts are understood:

* ``DIR/manifest.csv`` with ``file`` and ``wnid`` columns (``file`` relative to ``DIR``);
* ``DIR/<wnid>/<files>`` (the ImageNet layout; nested folders are walked);
* flat files named ``<wnid>.<ext>`` or ``<wnid>_anything.<ext>``.

Entries whose wnid is not a catalog class are skipped with reason ``unknown_class``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from curation.errors import CurationError
from curation.sources import Found, Skip

NAME = "folder"
WNID = re.compile(r"^n\d{8}$")
WNID_PREFIX = re.compile(r"^(n\d{8})(?:[_.-]|$)")
MANIFEST = "manifest.csv"


def discover(root: Path, classes: set[str]) -> Iterator[Found | Skip]:
    """Every image file under ``root`` as a candidate of its class (or a :class:`Skip`)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CurationError(f"--folder {root}: not a directory")
    if (root / MANIFEST).is_file():
        yield from _from_manifest(root, classes)
        return
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = path.relative_to(root)
        folder_wnid = next((part for part in relative.parts[:-1] if WNID.match(part)), None)
        name_match = WNID_PREFIX.match(path.name)
        wnid = folder_wnid or (name_match.group(1) if name_match else None)
        if wnid is None:
            yield Skip("no_class_in_name", str(path))
        else:
            yield _found_or_skip(path, wnid, classes)


def _from_manifest(root: Path, classes: set[str]) -> Iterator[Found | Skip]:
    manifest = root / MANIFEST
    try:
        with open(manifest, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"file", "wnid"} <= set(reader.fieldnames):
                raise CurationError(f"{manifest}: needs `file` and `wnid` columns, has {reader.fieldnames}")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CurationError(f"cannot read {manifest}: {exc}") from None
    for row in rows:
        file, wnid = (row.get("file") or "").strip(), (row.get("wnid") or "").strip()
        if not file or not wnid:
            yield Skip("bad_row", repr(row))
            continue
        yield _found_or_skip((root / file).resolve(), wnid, classes)


def _found_or_skip(path: Path, wnid: str, classes: set[str]) -> Found | Skip:
    if wnid not in classes:
        return Skip("unknown_class", f"{wnid} {path}")
    return Found(wnid=wnid, source=NAME, url=path.as_uri(), source_id=path.name, title=path.stem)
