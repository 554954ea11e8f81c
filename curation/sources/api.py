"""JSON API calls for the web sources: the shared guarded downloader plus a per-source request pace."""

from __future__ import annotations

import json
import threading
import time
from typing import Any
from urllib.parse import urlencode

from curation.downloader import Downloader, FetchError
from curation.sources import SourceError

API_MAX_BYTES = 8 * 1024 * 1024
# Requests per second each API asks for (sources.md): iNat ~1/s, Openverse 20/min anonymous.
DEFAULT_RATES = {"inaturalist": 1.0, "flickr": 1.0, "commons": 2.0, "openverse": 0.3, "duckduckgo": 0.5}


class ApiClient:
    """GETs JSON from one source's API, no faster than ``[sources.<name>] rate`` requests per second."""

    def __init__(self, downloader: Downloader, name: str, config: dict[str, Any]) -> None:
        self.downloader = downloader
        self.name = name
        rate = float(config.get("rate", DEFAULT_RATES.get(name, 1.0)))
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next_at = 0.0
        self._lock = threading.Lock()

    def get_text(self, url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> str:
        """The body of ``url?params`` as text; any failure becomes a one-line :class:`SourceError`."""
        with self._lock:
            delay = self._next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_at = time.monotonic() + self.interval
        full = f"{url}?{urlencode(params, doseq=True)}" if params else url
        try:
            fetched = self.downloader.fetch(full, polite=False, headers=headers, max_bytes=API_MAX_BYTES)
        except FetchError as exc:
            body = exc.body.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
            detail = "; ".join(part for part in (exc.detail, body) if part)
            raise SourceError(f"{exc.reason}" + (f" ({detail})" if detail else "")) from None
        return fetched.data.decode("utf-8", "replace")

    def get_json(self, url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
        """The JSON document at ``url?params``; a body that is not JSON is a :class:`SourceError`."""
        text = self.get_text(url, params, headers)
        try:
            return json.loads(text)
        except ValueError:
            raise SourceError(f"not a JSON response: {text[:120]!r}") from None
