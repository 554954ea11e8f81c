"""The crawl loop's ``[crawl]`` keys (the downloader's are :class:`curation.downloader.FetchConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from curation import options
from curation.sources import DEFAULT_SOURCES


@options.table("crawl")
@dataclass(frozen=True)
class CrawlOptions:
    """The crawl loop's keys of ``[crawl]``."""

    per_class: int = 100
    sources: tuple[str, ...] = tuple(DEFAULT_SOURCES)
    min_side: int = 64
    max_pixels: int = 40_000_000
    max_bytes: int = 20 * 1024 * 1024
    concurrency: int = 32
    check_threads: int = 2
    # Puts in flight to the image store: obstore's put rate against SeaweedFS was measured with 16
    # threads, and a crawl-shaped run with its puts in the 2 check threads reached 0.13x of local disk
    # at a 30 ms round trip against 0.55x with a 16-thread pool (notes/object_store.md).
    upload_threads: int = 16
