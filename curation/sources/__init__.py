"""Image sources: each turns a class's search queries (or a file list) into candidate records.

A web source is a class with a ``name`` and ``search(wnid, queries, limit)`` that yields
:class:`Found` records, paging until ``limit`` or the source's own cap. The crawl stage asks each
source for at most ``crawl.per_class`` candidates per class. ``urls`` and ``folder`` read lists
and directories instead of searching.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from curation.sources.api import ApiClient

# Web sources, in the order a default crawl asks them.
WEB_SOURCES = ("inaturalist", "flickr", "commons", "openverse", "duckduckgo")
DEFAULT_SOURCES = ("inaturalist", "flickr", "commons", "openverse")
LIST_SOURCES = ("urls", "folder")


@dataclass
class Found:
    """One discovered image for one class, with its provenance."""

    wnid: str
    source: str
    url: str
    source_id: str | None = None
    page_url: str | None = None
    title: str | None = None
    author: str | None = None
    license: str | None = None
    query: str | None = None


@dataclass
class Skip:
    """An entry of a list or folder that cannot become a candidate, with a short reason code."""

    reason: str
    item: str


class SourceError(Exception):
    """A source cannot be used now (no network, no key, rate limited); the message is one line."""


class SearchSource(Protocol):
    """What every web source module provides as its ``Source`` class."""

    name: str

    def search(self, wnid: str, queries: Sequence[str], limit: int) -> Iterator[Found]:
        """Candidates for one class, at most ``limit``, from the class's queries in order."""
        ...


def make_source(name: str, config: dict[str, Any], client: ApiClient) -> SearchSource:
    """Build the web source ``name`` from its ``[sources.<name>]`` table and an API client."""
    if name not in WEB_SOURCES:
        raise ValueError(f"unknown source {name!r}")
    module = importlib.import_module(f"curation.sources.{name}")
    return module.Source(config, client)
