"""The crawl's writes into the image store, nothing lost and no orphan, without a rename.

Per image: validate and hash (:mod:`curation.crawl.fetching`), journal its key, put it create-only
(:func:`put`: an object already there with the same size counts as stored, another size is the
item's error), commit the catalog, drop the key from the journal
(:class:`curation.crawl.writer.OutcomeWriter`). Journals live in the driver's local
``data_dir/.staging``: this process's ``store-<catalog id>.journal``, and on a cluster one per batch,
``store-<catalog id>.b<first job id>.journal``, written by :class:`BatchJournals` beside the driver
for the worker before its puts and dropped once the page is committed. A rerun's :func:`open_writes`
deletes exactly the journaled objects the catalog does not know, never listing the store.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from sqlalchemy import select

from curation import storage
from curation.catalog import FAILED, Catalog, Image, Meta
from curation.crawl.jobs import Accepted, Outcome
from curation.store import ImageStore, SizeMismatch, sha_of_key
from curation.store.recovery import claim, open_journal, recover


def put(store: ImageStore, accepted: Accepted) -> Outcome:
    """Store an accepted image under its content address; a key stored with other bytes is the
    job's error, left as it is. Any other store error stops the run (the store is unusable)."""
    try:
        store.put_if_absent(accepted.key, accepted.data)
    except SizeMismatch as exc:
        return Outcome(accepted.job, FAILED, "store_mismatch", exc.reason[:500])
    return accepted.stored()


def open_writes(catalog: Catalog, data_dir: Path, store: ImageStore) -> tuple[str, storage.WriteJournal]:
    """Claim the store for this catalog, remove what a killed run left in flight, and open this
    run's journal; returns the catalog id and the journal."""
    with catalog.session() as session:
        catalog_id = session.get(Meta, "catalog_id")
        if catalog_id is None:
            catalog_id = Meta(key="catalog_id", value=uuid.uuid4().hex)
            session.add(catalog_id)
        name = catalog_id.value
    owned = claim(store, name)
    if not owned:
        print(
            f"curation crawl: {store.url} belongs to another catalog; its unrecorded images are left alone",
            file=sys.stderr,
        )
    # Journals and temp files of runs before the image store (data_dir-relative paths).
    temps, orphans = storage.recover(data_dir, name, lambda paths: _recorded_paths(catalog, paths), owned)
    if owned:
        orphans += recover(store, data_dir, name, lambda keys: recorded_keys(catalog, keys))
    else:
        recover(store, data_dir, name, lambda keys: set(keys))  # drop the journals, delete nothing
    if temps or orphans:
        print(
            f"curation crawl: removed {temps} partial and {orphans} unrecorded images of an earlier run",
            file=sys.stderr,
        )
    return name, open_journal(data_dir, name)


def recorded_keys(catalog: Catalog, keys: list[str]) -> set[str]:
    """Which of these store keys the catalog knows (looked up by the hash that names each)."""
    paths = _recorded_paths(catalog, [f"images/{key}" for key in keys if sha_of_key(key)])
    return {path.removeprefix("images/") for path in paths}


def _recorded_paths(catalog: Catalog, paths: list[str]) -> set[str]:
    """Which of these data_dir-relative image paths the catalog knows."""
    by_sha = {Path(p).name.split(".")[0]: p for p in paths}
    shas = list(by_sha)
    with catalog.session() as session:
        return {
            path
            for start in range(0, len(shas), 500)
            for path in session.scalars(select(Image.path).where(Image.sha256.in_(shas[start : start + 500])))
        }


class BatchJournals:
    """The journals of a cluster's batches, in the driver's ``data_dir`` (this object lives beside
    the driver: :meth:`curation.engine.Executor.beside_driver`). A worker journals a batch's keys
    before it puts them; a batch that runs again (its node died) appends to the same journal."""

    def __init__(self, data_dir: Path, catalog_id: str) -> None:
        self.data_dir, self.catalog_id = Path(data_dir).absolute(), catalog_id
        self.open: dict[str, storage.WriteJournal] = {}

    def begin(self, batch: str, keys: list[str]) -> None:
        journal = self.open.get(batch)
        if journal is None:
            journal = self.open[batch] = open_journal(self.data_dir, f"{self.catalog_id}.{batch}")
        for key in keys:
            journal.begin(key)

    def forget(self, batch: str, keys: list[str]) -> None:
        """These keys were not put by this run (another object holds them): never delete them."""
        self.open[batch].recorded(keys)

    def drop(self) -> None:
        """Every batch begun so far is committed: remove their journals."""
        for journal in self.open.values():
            journal.close()
            journal.path.unlink(missing_ok=True)
        self.open = {}
