"""The image store URL: the ``[storage]`` table, URL parsing, and opening the store it names.

``[storage] images`` (``CURATION_STORAGE_IMAGES``) is ``file:///abs/path``, a plain path,
``s3://bucket/prefix``, ``gs://bucket/prefix`` or ``az://container/prefix``; unset, it is
``<data_dir>/images``, today's folder. The catalog, lock, journals, dedup index and reference hashes
stay in ``data_dir`` whatever the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from curation import options
from curation.errors import CurationError
from curation.store.base import ImageStore

OBJECT_SCHEMES = ("s3", "gs", "az")


@options.table("storage")
@dataclass(frozen=True)
class StorageOptions:
    """The ``[storage]`` keys."""

    images: str | None = None  # default: <data_dir>/images
    # How long a failing request (5xx, SlowDown, refused connection) is retried before the run stops
    # with one line; obstore's own default is 3 minutes.
    retry_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.retry_seconds <= 0:
            raise ValueError(f"[storage] retry_seconds must be positive, not {self.retry_seconds}")


def open_store(url: str, retry_seconds: float = StorageOptions.retry_seconds) -> ImageStore:
    """The store ``url`` names; one line (CurationError) for a URL it cannot be."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file"):
        from curation.store.local import FileStore

        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise CurationError(f"image store {url}: a file URL needs an absolute path, e.g. file:///data/images")
            return FileStore(Path(unquote(parts.path)))
        return FileStore(Path(url))
    if scheme not in OBJECT_SCHEMES:
        known = ", ".join(f"{s}://" for s in ("file", *OBJECT_SCHEMES))
        raise CurationError(f"image store {url}: unknown scheme {scheme}:// (known: {known})")
    if not parts.netloc:
        raise CurationError(f"image store {url}: no bucket, e.g. {scheme}://bucket/prefix")
    if parts.query or parts.fragment:
        raise CurationError(
            f"image store {url}: no ?query or #fragment; the endpoint and keys come from the environment"
        )
    from curation.store.cloud import CloudStore

    return CloudStore(scheme, parts.netloc, unquote(parts.path), retry_seconds)


def open_images(settings: Any, flags: Any = None) -> ImageStore:
    """The run's image store, from ``[storage]`` (flags > environment > config > data_dir/images)."""
    resolved = options.resolve(StorageOptions, settings, flags)
    return open_store(resolved.images or str(Path(settings.data_dir) / "images"), resolved.retry_seconds)
