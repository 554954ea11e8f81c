"""A job's bytes (over HTTP, or a local file for ``--folder``) and their validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from curation import storage
from curation.crawl.jobs import Accepted, Job, Outcome, status_of


class LocalFileError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def fetch_bytes(job: Job, downloader: Any, max_bytes: int) -> tuple[bytes, str] | Outcome:
    """The job's bytes and final URL, or its failed/skipped outcome."""
    from curation.downloader import FetchError

    try:
        if job.source == "folder":
            return read_local(job.url, max_bytes), job.url
        fetched = downloader.fetch(job.url)
        return fetched.data, fetched.url
    except (FetchError, storage.Rejected, LocalFileError) as exc:
        return Outcome(job, status_of(exc.reason), exc.reason, (getattr(exc, "detail", "") or str(exc))[:500])


def read_local(url: str, max_bytes: int) -> bytes:
    path = Path(url2pathname(urlsplit(url).path))
    try:
        if path.stat().st_size > max_bytes:
            raise storage.Rejected("too_large", f"{path.stat().st_size} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise LocalFileError("missing_file", str(path)) from None
    except OSError as exc:
        raise LocalFileError("unreadable_file", f"{path}: {exc.strerror}") from None


def check(job: Job, data: bytes, final_url: str, min_side: int, max_pixels: int) -> Accepted | Outcome:
    """Validate and hash the bytes: an accepted image to store, or the job's skipped/failed outcome."""
    try:
        image = storage.validate(data, min_side=min_side, max_pixels=max_pixels)
    except storage.Rejected as exc:
        return Outcome(job, status_of(exc.reason), exc.reason, exc.detail[:500])
    return Accepted(job, image, data, final_url)
