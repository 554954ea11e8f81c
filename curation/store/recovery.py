"""Nothing lost, no orphan, no rename: the journal protocol for writes into any image store.

Per image: validate and hash, :func:`open_journal`'s ``begin(key)`` (on the local disk, before the
object can exist), ``store.put_if_absent(key, data)``, commit the catalog, ``recorded(keys)``.
After a kill -9, :func:`recover` deletes exactly the journaled keys the catalog does not know, one
request per key, without listing the store. Journals of store keys are
``<data_dir>/.staging/store-<name>[.<batch>].journal``: the ``store-`` prefix keeps them apart from
``curation.storage.recover``'s ``<name>*.journal`` of data_dir-relative paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from curation.storage import OWNER_FILE, STAGING, WriteJournal
from curation.store.base import ImageStore, SizeMismatch

JOURNAL_PREFIX = "store-"


def open_journal(data_dir: Path, name: str) -> WriteJournal:
    """The journal of keys this run (catalog ``name``, or ``name.<batch>`` for a worker) puts."""
    return WriteJournal(data_dir, f"{JOURNAL_PREFIX}{name}")


def recover(store: ImageStore, data_dir: Path, name: str, recorded: Callable[[list[str]], set[str]]) -> int:
    """Delete every key journaled by catalog ``name``'s runs (the driver's and workers') that
    ``recorded`` says the catalog does not know, then the journals; returns how many objects went."""
    folder = Path(data_dir) / STAGING
    journals = [*folder.glob(f"{JOURNAL_PREFIX}{name}.journal"), *folder.glob(f"{JOURNAL_PREFIX}{name}.*.journal")]
    keys = sorted({key for journal in journals for key in journal.read_text(encoding="utf-8").split()})
    known = recorded(keys) if keys else set()
    removed = 0
    for key in keys:
        if key not in known and store.exists(key):
            store.delete(key)
            removed += 1
    for journal in journals:
        journal.unlink()
    return removed


def claim(store: ImageStore, catalog_id: str) -> bool:
    """Mark ``store`` as the image store of catalog ``catalog_id`` (the object ``.catalog-id``, today's
    marker in ``data_dir/images``, written create-only so two catalogs cannot both win); False if
    another catalog owns it (then objects it does not know must not be treated as leftovers)."""
    payload = f"{catalog_id}\n".encode()
    try:
        store.put_if_absent(OWNER_FILE, payload)
    except SizeMismatch:
        return False
    return store.get(OWNER_FILE) == payload
