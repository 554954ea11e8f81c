"""The image store interface and its errors.

Writes are create-only: :meth:`ImageStore.put_if_absent` never replaces an object. A key that is
already there counts as stored when its size matches (keys are content addresses, so equal size
means the same upload finished earlier); a different size is a :class:`SizeMismatch`, never kept
silently.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator

from curation.errors import CurationError

# ab/cd/<sha256>.<ext>: the content address of every stored image (curation.storage's layout).
IMAGE_KEY = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/(\1\2[0-9a-f]{60})\.[a-z0-9]+")


class StoreError(CurationError):
    """One line: which store, and what went wrong (never a credential)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"image store {url}: {reason}")
        self.url = url
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        """Pickles as its url and reason (it crosses to decode workers and back from them)."""
        return type(self), (self.url, self.reason)


class MissingObject(StoreError):
    """A key that should be in the store is not."""


class SizeMismatch(StoreError):
    """A key is already stored with other bytes than the ones being put (left as it is)."""


def image_key(sha256: str, ext: str) -> str:
    """The key of an image: ``ab/cd/<sha256>.<ext>`` (its path under ``data_dir/images`` today)."""
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"


def sha_of_key(key: str) -> str | None:
    """The SHA-256 a key names, or None for a key that is not an image's content address."""
    match = IMAGE_KEY.fullmatch(key)
    return match.group(3) if match else None


def check_key(url: str, key: str) -> str:
    """``key`` if it is a plain relative key (no empty, ``.`` or ``..`` segment), else a StoreError."""
    if not key or any(part in ("", ".", "..") for part in key.split("/")) or "\\" in key:
        raise StoreError(url, f"bad key {key!r}: expected a relative path such as ab/cd/<sha256>.jpg")
    return key


class ImageStore(ABC):
    """Put-if-absent, get, ranged get, head/exists, list by prefix and delete, under one URL."""

    url: str

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` unless it is there: True if written now, False if already
        stored with the same size; :class:`SizeMismatch` if stored with another size."""
        for _ in range(2):  # a key deleted between the refused create and the head is created again
            if self.create(key, data):
                return True
            stored = self.head(key)
            if stored == len(data):
                return False
            if stored is not None:
                raise SizeMismatch(
                    self.url, f"{key} is stored with {stored} bytes, not the {len(data)} being put; left as it is"
                )
        raise StoreError(self.url, f"{key} keeps disappearing while it is written")

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` under ``key`` atomically if no object is there; False if one is."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; :class:`MissingObject` if there is none."""

    @abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object, cut at its end (empty past it)."""

    @abstractmethod
    def head(self, key: str) -> int | None:
        """The object's size in bytes, or None if there is none."""

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix`` (whole path segments; "" lists all)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; nothing happens if there is none."""

    @abstractmethod
    def beside(self, name: str) -> ImageStore:
        """A store of the same kind at ``name`` next to this one's prefix (outside the images),
        for control objects such as the preflight's."""
