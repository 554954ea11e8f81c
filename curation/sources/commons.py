"""Wikimedia Commons: ``generator=search`` over the File namespace with ``imageinfo`` thumbnails.

Thumbnails are requested at a standard width (``iiurlwidth`` 500, 960 or 1280; other widths are
refused by Wikimedia). Every key of ``continue`` is copied into the next request; pages that come
back without ``imageinfo`` (secondary continuation) are merged by page id until ``batchcomplete``.
Both ``formatversion`` 1 (pages keyed by id) and 2 (a list, ranked by ``index``) are read.
"""

from __future__ import annotations

import html
import mimetypes
import re
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from curation.sources import Found, SourceError
from curation.sources.api import ApiClient

NAME = "commons"
BASE_URL = "https://commons.wikimedia.org/w/api.php"
STANDARD_WIDTHS = (500, 960, 1280)
BITMAP_MIMES = ("image/jpeg", "image/png", "image/webp", "image/gif")
MAX_ROUNDS = 100
TAG = re.compile(r"<[^>]+>")


def plain_text(markup: str) -> str:
    """Text of an HTML fragment (Commons ``Artist`` values are HTML)."""
    return " ".join(html.unescape(TAG.sub(" ", markup)).split())


def _meta(info: dict[str, Any], key: str) -> str:
    entry = (info.get("extmetadata") or {}).get(key) or {}
    return plain_text(str(entry.get("value") or ""))


class Source:
    name = NAME

    def __init__(self, config: dict[str, Any], client: ApiClient) -> None:
        self.base = str(config.get("base_url", BASE_URL))
        self.client = client
        self.width = int(config.get("thumb_width", 960))
        if self.width not in STANDARD_WIDTHS:
            raise SourceError(f"[sources.commons] thumb_width must be one of {STANDARD_WIDTHS}")

    def search(self, wnid: str, queries: Sequence[str], limit: int) -> Iterator[Found]:
        seen: set[str] = set()
        for query in queries:
            for found in self._query(wnid, query, limit):
                if found.source_id not in seen:
                    seen.add(str(found.source_id))
                    yield found
                if len(seen) >= limit:
                    return

    def _query(self, wnid: str, query: str, limit: int) -> Iterator[Found]:
        params = {
            "action": "query", "format": "json", "formatversion": 2, "generator": "search",
            "gsrsearch": f"{query} filetype:bitmap", "gsrnamespace": 6, "gsrlimit": max(1, min(50, limit)),
            "prop": "imageinfo", "iiprop": "url|size|mime|extmetadata|user", "iiurlwidth": self.width,
            "iiextmetadatafilter": "ObjectName|Artist|LicenseShortName|License|UsageTerms",
            "iiextmetadatalanguage": "en", "maxlag": 5,
        }  # fmt: skip
        pages: dict[int, dict[str, Any]] = {}
        cont: dict[str, Any] = {}
        for _round in range(MAX_ROUNDS):
            data = self.client.get_json(self.base, {**params, **cont})
            if "error" in data:
                raise SourceError(f"API error {data['error'].get('code')}: {data['error'].get('info')}")
            raw = (data.get("query") or {}).get("pages") or []
            for page in raw.values() if isinstance(raw, dict) else raw:
                merged = pages.setdefault(int(page["pageid"]), {})
                merged.update({k: v for k, v in page.items() if k != "imageinfo" or v})
            cont = data.get("continue") or {}
            if "batchcomplete" in data or not cont:
                ranked = sorted(pages.values(), key=lambda p: p.get("index", 0))
                for page in ranked:
                    found = self._found(wnid, query, page)
                    if found is not None:
                        yield found
                pages = {}
            if not cont:
                return

    def _found(self, wnid: str, query: str, page: dict[str, Any]) -> Found | None:
        info = (page.get("imageinfo") or [None])[0]
        if not info or not (info.get("thumburl") or info.get("url")):
            return None
        url = info.get("thumburl") or info["url"]
        if (info.get("mime") or mimetypes.guess_type(urlsplit(info.get("url") or url).path)[0]) not in BITMAP_MIMES:
            return None
        title = str(page.get("title", "")).removeprefix("File:")
        return Found(
            wnid=wnid,
            source=NAME,
            source_id=str(page["pageid"]),
            url=url,
            page_url=info.get("descriptionurl"),
            title=_meta(info, "ObjectName") or title.rsplit(".", 1)[0] or None,
            author=_meta(info, "Artist") or info.get("user") or None,
            license=_meta(info, "LicenseShortName") or _meta(info, "License") or None,
            query=query,
        )
