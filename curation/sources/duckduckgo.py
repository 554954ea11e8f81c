"""DuckDuckGo image search: BEST-EFFORT, unofficial, for recall only.

There is no official API: a ``vqd`` token is scraped from the search page, then the JSON endpoint
``i.js`` is paged with ``s`` offsets until ``next`` is absent (at most 5 pages). DuckDuckGo changes
this every few months and rate-limits with 202/403/418/429; any such answer stops the source for
the run. Results carry no author, licence or stable id (the id is a hash of the image URL);
licence and usage rights must be obtained separately.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

from curation.sources import Found, SourceError
from curation.sources.api import ApiClient

NAME = "duckduckgo"
BASE_URL = "https://duckduckgo.com"
MAX_PAGES = 5
VQD = (re.compile(r'vqd="([^"]+)"'), re.compile(r"vqd=([\d-]+)&"), re.compile(r"vqd='([^']+)'"))


class Source:
    name = NAME

    def __init__(self, config: dict[str, Any], client: ApiClient) -> None:
        self.base = str(config.get("base_url", BASE_URL)).rstrip("/")
        self.client = client
        self.region = str(config.get("region", "us-en"))
        self.headers = {"Referer": f"{self.base}/"}

    def vqd(self, query: str) -> str:
        """The per-query token DuckDuckGo embeds in its search page."""
        page = self.client.get_text(f"{self.base}/", {"q": query, "iax": "images", "ia": "images"})
        for pattern in VQD:
            match = pattern.search(page)
            if match:
                return match.group(1)
        raise SourceError("no vqd token in the search page (DuckDuckGo changed or is rate-limiting)")

    def search(self, wnid: str, queries: Sequence[str], limit: int) -> Iterator[Found]:
        seen: set[str] = set()
        for query in queries:
            token = self.vqd(query)
            offset: str | None = "0"
            for _page in range(MAX_PAGES):
                if offset is None:
                    break
                params = {"o": "json", "q": query, "l": self.region, "vqd": token, "p": 1, "s": offset, "f": ",,,,,"}
                data = self.client.get_json(f"{self.base}/i.js", params, self.headers)
                for item in data.get("results") or []:
                    image = item.get("image")
                    if not image or image in seen:
                        continue
                    seen.add(image)
                    yield self._found(wnid, query, item)
                    if len(seen) >= limit:
                        return
                offset = (parse_qs(urlsplit(data["next"]).query).get("s") or [None])[0] if data.get("next") else None

    def _found(self, wnid: str, query: str, item: dict[str, Any]) -> Found:
        return Found(
            wnid=wnid,
            source=NAME,
            source_id=hashlib.sha1(item["image"].encode()).hexdigest()[:16],
            url=item["image"],
            page_url=item.get("url"),
            title=item.get("title") or None,
            query=query,
        )
