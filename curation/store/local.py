"""``file://`` image store: a folder on a local disk, today's ``data_dir/images`` layout byte for byte.

A write goes to a temp file in ``<root>/../.staging`` (``curation.storage``'s staging folder, whose
leftovers ``curation.storage.recover`` removes) and is renamed to its key, so a killed process never
leaves a partial image under its final name. A local disk has an atomic rename but no create-only
rename, so "create" is a size check then the rename: two writers racing on one content address hold
the same bytes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG

from curation.storage import STAGING, TEMP_SUFFIX
from curation.store.base import ImageStore, MissingObject, StoreError, check_key


class FileStore(ImageStore):
    """Objects are files under ``root``; keys are their relative POSIX paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.url = self.root.as_uri()
        self.staging = self.root.parent / STAGING

    def _path(self, key: str) -> str:
        return os.path.join(self.root, check_key(self.url, key))

    def _fail(self, exc: OSError, key: str) -> StoreError:
        return StoreError(self.url, f"{key}: {exc.strerror or exc}")

    def create(self, key: str, data: bytes) -> bool:
        final = self._path(key)
        if self.head(key) is not None:
            return False
        temp = os.path.join(
            self.staging, f"{os.path.basename(key)}.{os.getpid()}.{threading.get_ident():x}{TEMP_SUFFIX}"
        )
        try:
            os.makedirs(self.staging, exist_ok=True)
            with open(temp, "wb") as out:
                out.write(data)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise self._fail(exc, key) from None
        return True

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as fh:
                return fh.read()
        except (FileNotFoundError, NotADirectoryError):
            raise MissingObject(self.url, f"missing object {key}") from None
        except OSError as exc:
            raise self._fail(exc, key) from None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._path(key), "rb") as fh:
                fh.seek(start)
                return fh.read(max(0, end - start))
        except (FileNotFoundError, NotADirectoryError):
            raise MissingObject(self.url, f"missing object {key}") from None
        except OSError as exc:
            raise self._fail(exc, key) from None

    def head(self, key: str) -> int | None:
        try:
            stat = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._fail(exc, key) from None
        return stat.st_size if S_ISREG(stat.st_mode) else None

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        top = self._path(prefix) if prefix else str(self.root)
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            relative = os.path.relpath(folder, self.root).replace(os.sep, "/")
            for name in sorted(files):
                key = name if relative == "." else f"{relative}/{name}"
                with contextlib.suppress(FileNotFoundError):
                    yield key, os.stat(os.path.join(folder, name)).st_size

    def delete(self, key: str) -> None:
        """Remove the file, then the folders it leaves empty up to the store's own (a preflight's
        folder beside the images goes with its last object; the images keep their ``.catalog-id``)."""
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._fail(exc, key) from None
        folder = os.path.dirname(path)
        while len(folder) >= len(str(self.root)):
            try:
                os.rmdir(folder)
            except OSError:
                return  # not empty (or gone): the folders above are not empty either
            folder = os.path.dirname(folder)

    def beside(self, name: str) -> FileStore:
        return FileStore(self.root.parent / check_key(self.url, name))
