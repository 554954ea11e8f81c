"""`curation crawl`: discover candidate images for each class, then download, validate and store them.

Two phases, each with a progress bar:

1. discover: ask each source for up to ``--per-class`` candidates per class (``--urls`` and
   ``--folder`` add every row/file of a list or directory); new candidates are ``pending``.
2. download: fetch every pending candidate (many connections overall, few per host), validate
   the bytes, put them into the image store (``[storage] images``: ``data/images`` by default, or
   ``s3://``, ``gs://``, ``az://``) under their SHA-256 and mark the candidate ``downloaded``,
   ``failed`` or ``skipped`` with a short reason.

Everything is committed in small batches, so a killed crawl loses at most a few seconds of work:
a rerun deletes the stored images the catalog does not know (from the write journals, never by
listing the store) and continues with the pending candidates.

Modules: ``stage`` (the command, locks, the store and cluster checks), ``discover``, ``download``
(the phase), ``jobs`` (jobs and outcomes), ``fetching`` (bytes and validation), ``pipeline`` (the
local fetch/check/put pools), ``cluster`` (the same on a cluster's workers), ``writes`` (journal,
create-only put, recovery), ``writer`` (outcomes into the catalog), ``summary``, ``config``.
"""

from curation.crawl.config import CrawlOptions
from curation.crawl.stage import crawl, register, run
from curation.crawl.summary import Summary

__all__ = ["CrawlOptions", "Summary", "crawl", "register", "run"]
