"""Reading catalog images through the image store, many requests in flight.

A stage turns the catalog's ``Image.path`` (``images/ab/cd/<sha256>.<ext>``, relative to data_dir)
into an :class:`ImageRef` with :meth:`ImageReader.ref`; decoders open a ref (or a plain local path)
with :func:`readable`, and batch readers fetch many at once with :func:`fetch_sources`,
:class:`FetchedBatches` or :class:`FetchedInOrder`, so a store's round trips overlap each other and
the decoding. Refs pickle as the store's URL and a key: each process that reads them (a Ray node)
opens the store itself, with its own credentials; workers forked from the process that reads them
get bytes instead.

A missing object is that image's failure (:class:`~curation.store.base.MissingObject`, one line); any
other store error (server down, access denied) stops the stage with one line (:class:`ReadFailed`).
"""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from curation.errors import CurationError
from curation.store.base import ImageStore, MissingObject, StoreError, check_key

# GETs in flight per process: obstore's get rate on SeaweedFS was measured with 16 threads (1,130/s
# of 100 KB objects); local reads gain nothing from more.
FETCH_THREADS = 16
FETCH_WINDOW = 4 * FETCH_THREADS  # images fetched ahead of a sequential reader (bounded memory)
CATALOG_PREFIX = "images/"  # Image.path is data_dir-relative; keys are relative to the store's root

_LOCK = threading.Lock()
_OPEN: dict[tuple[int, str, float], ImageStore] = {}  # per process: a forked child opens its own
_POOLS: dict[int, ThreadPoolExecutor] = {}


class ReadFailed(CurationError):
    """A store error that stops the stage (server down, access denied; not a missing object)."""


@dataclass(frozen=True)
class ImageReader:
    """Opens the image store at ``url`` once per process and reads keys from it."""

    url: str
    retry_seconds: float

    @property
    def store(self) -> ImageStore:
        from curation.store.location import open_store

        token = (os.getpid(), self.url, self.retry_seconds)
        store = _OPEN.get(token)  # no lock once open: fetch threads never hold it across a fork
        if store is None:
            with _LOCK:
                store = _OPEN.get(token) or open_store(self.url, self.retry_seconds)
                _OPEN[token] = store
        return store

    def ref(self, catalog_path: str) -> ImageRef:
        """The stored image at the catalog's ``Image.path``; StoreError for a path that is no key
        (empty, ``.`` or ``..`` segments)."""
        return ImageRef(self, check_key(self.url, catalog_path.removeprefix(CATALOG_PREFIX)))

    def get(self, key: str) -> bytes:
        """The object's bytes; MissingObject for none, ReadFailed for any other store error."""
        try:
            return self.store.get(key)
        except MissingObject:
            raise
        except StoreError as exc:
            raise ReadFailed(str(exc)) from None


@dataclass(frozen=True)
class ImageRef:
    """One stored image: its reader and key."""

    reader: ImageReader
    key: str

    def read(self) -> bytes:
        return self.reader.get(self.key)

    def __str__(self) -> str:
        return f"{self.reader.url.rstrip('/')}/{self.key}"


Item = ImageRef | Path | str  # what a decoder reads: a stored image or a local file
Source = bytes | Path | str | Exception  # its bytes (a stored image), its path (a local file) or why not


def local_reader(data_dir: Path | str) -> ImageReader:
    """The default image store: the folder ``<data_dir>/images``, with the default retry time."""
    from curation.store.location import StorageOptions

    return ImageReader(str(Path(data_dir).absolute() / "images"), StorageOptions.retry_seconds)


def open_reader(settings: Any, flags: Any = None, check: bool = True, cluster: Any = None) -> ImageReader:
    """The run's image reader from ``[storage]``; with ``check``, an object store is preflighted first
    (write, read back and delete one object beside the images) by this machine and every node of
    ``cluster`` (an executor): one line naming the machine, and no work, if that fails."""
    from curation import options
    from curation.store.location import StorageOptions
    from curation.store.preflight import preflight, preflight_nodes

    resolved = options.resolve(StorageOptions, settings, flags)
    reader = ImageReader(resolved.images or str(Path(settings.data_dir).absolute() / "images"), resolved.retry_seconds)
    store = reader.store  # one line now for an unknown scheme or a missing client
    if check and not store.url.startswith("file:"):
        preflight(store, "the driver")
        if cluster is not None:
            preflight_nodes(store, cluster, resolved.retry_seconds)
    return reader


def readable(item: Item) -> BinaryIO | Path | str:
    """What ``PIL.Image.open`` takes for ``item``: a local path as it is, a stored image's bytes."""
    return io.BytesIO(item.read()) if isinstance(item, ImageRef) else item


def source_file(source: bytes | Path | str) -> BinaryIO | Path | str:
    """What ``PIL.Image.open`` takes for a fetched source."""
    return io.BytesIO(source) if isinstance(source, bytes) else source


def as_item(item: Item) -> ImageRef | str:
    """A decoder's own copy of an item: refs stay refs, paths become strings (cheap to pickle)."""
    return item if isinstance(item, ImageRef) else str(item)


def _pool() -> ThreadPoolExecutor:
    with _LOCK:
        pid = os.getpid()
        if pid not in _POOLS:
            _POOLS[pid] = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="image-fetch")
        return _POOLS[pid]


def _start(item: Item) -> Future | Path | str:
    return _pool().submit(item.read) if isinstance(item, ImageRef) else item


def _settle(pending: Future | Path | str) -> Source:
    if not isinstance(pending, Future):
        return pending
    try:
        return pending.result()
    except MissingObject as exc:
        return exc


def fetch_sources(items: Iterable[Item], window: int = FETCH_WINDOW) -> Iterator[Source]:
    """Each item's source in order, up to ``window`` stored images requested ahead of the one
    returned: bytes, a local path, or the MissingObject of an image that is not in the store.
    ReadFailed stops it."""
    queue = iter(items)
    started = deque(_start(item) for item in itertools.islice(queue, window))
    while started:
        pending = started.popleft()
        for item in itertools.islice(queue, 1):
            started.append(_start(item))
        yield _settle(pending)


class FetchedBatches:
    """A DataLoader batch sampler: the batches of ``items`` in order, as lists of (position, source),
    their stored images fetched in this process, ``ahead`` images in flight. Fetching here rather than
    in the decode workers matters: they are forked, and obstore's client is not fork-safe (a GET in
    a forked child of a process that used it hangs)."""

    def __init__(self, items: Sequence[Item], batch_size: int, ahead: int = FETCH_WINDOW) -> None:
        self.items, self.batch_size, self.ahead = items, batch_size, max(ahead, batch_size)

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, Source]]]:
        sources = fetch_sources(self.items, self.ahead)
        for start in range(0, len(self.items), self.batch_size):
            span = range(start, min(start + self.batch_size, len(self.items)))
            yield list(zip(span, itertools.islice(sources, len(span)), strict=True))


class FetchedInOrder(Sequence):
    """``pairs`` of (name, item) as (name, source), fetched in this process a window ahead, for workers
    forked from it (see :class:`FetchedBatches`); read front to back in slices, as an executor hands
    out batches."""

    def __init__(self, pairs: Sequence[tuple[Any, Item]]) -> None:
        self.pairs = pairs
        self.sources = fetch_sources([item for _, item in pairs])
        self.position = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, slice) or index.step not in (None, 1) or (index.start or 0) != self.position:
            raise IndexError("FetchedInOrder is read front to back in slices")
        names = [name for name, _ in self.pairs[index]]
        self.position += len(names)
        return list(zip(names, itertools.islice(self.sources, len(names)), strict=True))
