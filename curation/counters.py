"""Catalog-wide sequence numbers kept in ``catalog_meta``, so that a later stage can ask "what changed
since I last looked" with one indexed range instead of a walk over the catalog.

``DOWNLOADS``: the crawl takes the next value for each batch of outcomes it commits and stamps it on the
candidates that batch marks downloaded (``candidates.download_seq``); the filter remembers the value up
to which every pair is scored. One crawl writes per catalog at a time (its catalog lock), so reading
and writing the row in the batch's transaction cannot race another writer.
"""

from __future__ import annotations

from typing import Any

DOWNLOADS = "seq:downloads"


def current(session: Any, key: str) -> int:
    """The last value taken of ``key`` (0 before the first)."""
    from curation.catalog import Meta

    meta = session.get(Meta, key)
    return int(meta.value) if meta is not None else 0


def take_next(session: Any, key: str) -> int:
    """Take and return the next value of ``key`` in the caller's transaction."""
    from curation.catalog import Meta

    value = current(session, key) + 1
    session.merge(Meta(key=key, value=str(value)))
    return value
