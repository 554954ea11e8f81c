"""Flickr ``flickr.photos.search`` with a licence filter (API key from config or ``FLICKR_API_KEY``).

Image URL preference: ``url_c`` (800 px), ``url_l`` (1024), ``url_z`` (640), else the 640 px URL
built from server/id/secret. API errors arrive as HTTP 200 with ``stat: fail`` (sometimes not even
valid JSON); both become a one-line source error. Flickr serves at most 4,000 results per query.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from curation.sources import Found, SourceError
from curation.sources.api import ApiClient

NAME = "flickr"
BASE_URL = "https://api.flickr.com/services/rest/"
STATIC_BASE = "https://live.staticflickr.com"
# flickr.photos.licenses.getInfo, recorded 2025-06-19 (ids 0 and 7/8 are not open licences).
LICENSES = {
    "0": "All Rights Reserved", "1": "CC BY-NC-SA 2.0", "2": "CC BY-NC 2.0", "3": "CC BY-NC-ND 2.0",
    "4": "CC BY 2.0", "5": "CC BY-SA 2.0", "6": "CC BY-ND 2.0", "7": "No known copyright restrictions",
    "8": "United States Government Work", "9": "CC0 1.0", "10": "Public Domain Mark 1.0", "11": "CC BY 4.0",
    "12": "CC BY-SA 4.0", "13": "CC BY-ND 4.0", "14": "CC BY-NC 4.0", "15": "CC BY-NC-SA 4.0", "16": "CC BY-NC-ND 4.0",
}  # fmt: skip
OPEN_LICENSE_IDS = ("1", "2", "3", "4", "5", "6", "9", "10", "11", "12", "13", "14", "15", "16")
MAX_PER_PAGE = 500
RESULT_CAP = 4000


class Source:
    name = NAME

    def __init__(self, config: dict[str, Any], client: ApiClient) -> None:
        self.base = str(config.get("base_url", BASE_URL))
        self.key = str(config.get("api_key") or os.environ.get("FLICKR_API_KEY") or "")
        if not self.key:
            raise SourceError("no API key: set FLICKR_API_KEY or [sources.flickr] api_key")
        self.client = client
        self.static_base = str(config.get("static_base", STATIC_BASE)).rstrip("/")
        self.licenses = [str(x) for x in config.get("licenses", OPEN_LICENSE_IDS)]

    def search(self, wnid: str, queries: Sequence[str], limit: int) -> Iterator[Found]:
        seen: set[str] = set()
        for query in queries:
            page, per_page = 1, max(1, min(MAX_PER_PAGE, limit))
            while True:
                photos = self._page(query, page, per_page)
                for photo in photos.get("photo") or []:
                    if str(photo["id"]) in seen or str(photo.get("license")) not in self.licenses:
                        continue
                    seen.add(str(photo["id"]))
                    yield self._found(wnid, query, photo)
                    if len(seen) >= limit:
                        return
                if not photos.get("photo") or page >= int(photos.get("pages") or 0) or page * per_page >= RESULT_CAP:
                    break
                page += 1

    def _page(self, query: str, page: int, per_page: int) -> dict[str, Any]:
        params = {
            "method": "flickr.photos.search", "api_key": self.key, "format": "json", "nojsoncallback": 1,
            "text": query, "license": ",".join(self.licenses), "media": "photos", "content_types": 0,
            "safe_search": 1, "sort": "relevance", "extras": "url_z,url_c,url_l,owner_name,license,o_dims",
            "per_page": per_page, "page": page,
        }  # fmt: skip
        data = self.client.get_json(self.base, params)
        if not isinstance(data, dict) or data.get("stat") != "ok":
            message = data.get("message") if isinstance(data, dict) else data
            raise SourceError(f"API error {data.get('code') if isinstance(data, dict) else ''}: {message}")
        return data.get("photos") or {}

    def _found(self, wnid: str, query: str, photo: dict[str, Any]) -> Found:
        url = photo.get("url_c") or photo.get("url_l") or photo.get("url_z")
        if not url:
            url = f"{self.static_base}/{photo['server']}/{photo['id']}_{photo['secret']}_z.jpg"
        return Found(
            wnid=wnid,
            source=NAME,
            source_id=str(photo["id"]),
            url=url,
            page_url=f"https://www.flickr.com/photos/{photo['owner']}/{photo['id']}/",
            title=photo.get("title") or None,
            author=photo.get("ownername") or photo.get("owner"),
            license=LICENSES.get(str(photo.get("license")), str(photo.get("license"))),
            query=query,
        )
