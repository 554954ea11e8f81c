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

from curation.storage import STAGING, WriteJournal
from curation.store.base import ImageStore

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
