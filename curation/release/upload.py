"""`curation release s3://bucket/prefix` (or ``gs://``, ``az://``): the release is built locally as
for a folder, then uploaded under the URL in the same layout (``<prefix>/<name>/<wnid>/<sha256>.jpg``,
the metadata beside them, ``<prefix>/<name>.tar.gz`` and its ``.sha256``).

Readers trust only a finished upload: ``manifest.csv``, ``SHA256SUMS`` and the archive's ``.sha256``
are written last, after every other object is uploaded and listed back with its size (img2dataset
writes its done marker last for the same reason). A target that holds a finished release is refused
without ``--force``; what a killed upload left (no checksums yet) is deleted before a new upload.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from curation.errors import CurationError
from curation.store.base import ImageStore, StoreError
from curation.store.location import OBJECT_SCHEMES, open_store
from curation.store.preflight import preflight

# Requests in flight (obstore's put rate on SeaweedFS was measured with 16 threads).
UPLOAD_THREADS = 16
LAST = ("manifest.csv", "SHA256SUMS")  # inside <name>/, then <name>.tar.gz.sha256


def is_store_url(target: str) -> bool:
    """Whether a release target names an object store rather than a local folder."""
    return urlsplit(target).scheme.lower() in OBJECT_SCHEMES


def open_target(url: str, name: str, force: bool, retry_seconds: float) -> ImageStore:
    """The store a release goes to, preflighted; refuses one that holds a finished release of
    ``name`` unless ``force``, and clears what a killed upload (or a forced one) replaces."""
    store = open_store(url, retry_seconds)
    preflight(store, "the driver")
    try:
        finished = store.exists(f"{name}.tar.gz.sha256") or store.exists(f"{name}/SHA256SUMS")
        if finished and not force:
            raise CurationError(f"{store.url} already holds release {name}; pass --force to replace it")
        archives = [key for key in (f"{name}.tar.gz", f"{name}.tar.gz.sha256") if store.exists(key)]
        for key in [key for key, _ in store.list(name)] + archives:
            store.delete(key)
    except StoreError as exc:
        raise CurationError(str(exc)) from None
    return store


def upload_release(folder: Path, name: str, store: ImageStore) -> int:
    """Upload ``folder/<name>/`` and ``folder/<name>.tar.gz[.sha256]``: every object, then (once a
    listing shows them all at their sizes) the manifest and checksums. Returns the objects uploaded."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    last = [f"{name}/{f}" for f in LAST] + [f"{name}.tar.gz.sha256"]
    first = [f for f in files if f not in last]
    try:
        _put_all(store, folder, first)
        listed = dict(store.list(name))
        listed[f"{name}.tar.gz"] = store.head(f"{name}.tar.gz")
        wrong = [f for f in first if listed.get(f) != (folder / f).stat().st_size]
        if wrong:
            raise CurationError(f"release upload to {store.url}: {wrong[0]} did not list back whole; rerun the release")
        _put_all(store, folder, [f for f in last if f in files])
    except StoreError as exc:
        raise CurationError(f"release upload: {exc}") from None
    return len(files)


def _put_all(store: ImageStore, folder: Path, keys: list[str]) -> None:
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        for _ in pool.map(lambda key: store.put_if_absent(key, (folder / key).read_bytes()), keys):
            pass
