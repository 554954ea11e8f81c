"""Openverse ``/v1/images/``: an index of openly licensed images (Flickr, Wikimedia, iNaturalist, ...).

Anonymous clients get pages of at most 20; a token (``[sources.openverse] api_key``, sent as a
Bearer token) allows up to 500. Openverse serves at most about 240 works per query. A throttled
request (429, often without ``Retry-After``) stops the source for this run with the API's message.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from curation.sources import Found
from curation.sources.api import ApiClient

NAME = "openverse"
BASE_URL = "https://api.openverse.org/v1"
ANONYMOUS_PAGE = 20
KEYED_PAGE = 500
RESULT_CAP = 240
PUBLIC_DOMAIN = {"cc0": "CC0", "pdm": "Public Domain Mark"}


def license_name(code: str | None, version: str | None) -> str | None:
    """Openverse's ``by``/``2.0`` → ``CC BY 2.0``."""
    if not code:
        return None
    name = PUBLIC_DOMAIN.get(code.lower()) or f"CC {code.upper()}"
    return f"{name} {version}" if version else name


class Source:
    name = NAME

    def __init__(self, config: dict[str, Any], client: ApiClient) -> None:
        self.base = str(config.get("base_url", BASE_URL)).rstrip("/")
        self.client = client
        self.token = str(config.get("api_key") or "")
        self.page_size = KEYED_PAGE if self.token else ANONYMOUS_PAGE
        self.licenses = config.get("licenses")

    def search(self, wnid: str, queries: Sequence[str], limit: int) -> Iterator[Found]:
        seen: set[str] = set()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        for query in queries:
            page, size = 1, max(1, min(self.page_size, limit))
            while True:
                params: dict[str, Any] = {"q": query[:200], "page_size": size, "page": page, "mature": "false"}
                if self.licenses:
                    params["license"] = ",".join(self.licenses)
                data = self.client.get_json(f"{self.base}/images/", params, headers)
                results = data.get("results") or []
                for item in results:
                    if item.get("id") in seen or not item.get("url"):
                        continue
                    seen.add(item["id"])
                    yield self._found(wnid, query, item)
                    if len(seen) >= limit:
                        return
                if not results or page >= int(data.get("page_count") or 0) or page * size >= RESULT_CAP:
                    break
                page += 1

    def _found(self, wnid: str, query: str, item: dict[str, Any]) -> Found:
        return Found(
            wnid=wnid,
            source=NAME,
            source_id=str(item["id"]),
            url=item["url"],
            page_url=item.get("foreign_landing_url"),
            title=item.get("title") or None,
            author=item.get("creator") or None,
            license=license_name(item.get("license"), item.get("license_version")),
            query=query,
        )
