"""iNaturalist API v1: name → taxon id, then research-grade observations with openly licensed photos.

Photo URLs come at the 75 px ``square`` size and are rewritten to ``large`` (≤1024 px), keeping the
host, extension and query. Each photo's own licence is checked again (the API filter only asks for
at least one such photo per observation); hidden or flagged photos are dropped.

The API serves at most 10,000 records per query (``page * per_page``), so observations are read
newest first by id and paged with ``id_below=<smallest id so far>``: every request is a first page,
and a taxon with more observations than the cap is read to its end.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

from curation.sources import Found, SourceError
from curation.sources.api import ApiClient

NAME = "inaturalist"
BASE_URL = "https://api.inaturalist.org/v1"
OPEN_LICENSES = ("cc0", "cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nd", "cc-by-nc-sa", "cc-by-nc-nd")
MAX_PER_PAGE = 200
SIZE = re.compile(r"/square\.")


def license_name(code: str) -> str:
    """``cc-by-nc`` → ``CC BY-NC``; ``cc0`` → ``CC0``."""
    return "CC0" if code == "cc0" else "CC " + code[3:].upper()


class Source:
    name = NAME

    def __init__(self, config: dict[str, Any], client: ApiClient) -> None:
        self.base = str(config.get("base_url", BASE_URL)).rstrip("/")
        self.client = client
        self.licenses = tuple(config.get("licenses", OPEN_LICENSES))
        self.quality = str(config.get("quality_grade", "research"))
        self.size = str(config.get("size", "large"))
        self.per_page = max(1, min(MAX_PER_PAGE, int(config.get("per_page", MAX_PER_PAGE))))

    def taxon_ids(self, query: str) -> list[int]:
        """Active taxa whose scientific name, matched term or common name equals ``query``."""
        data = self.client.get_json(f"{self.base}/taxa", {"q": query, "is_active": "true", "per_page": 30})
        wanted = query.strip().lower()
        return [
            int(t["id"])
            for t in data.get("results", [])
            if t.get("is_active", True)
            and wanted
            in {str(t.get(k) or "").strip().lower() for k in ("name", "matched_term", "preferred_common_name")}
        ]

    def search(self, wnid: str, queries: Sequence[str], limit: int) -> Iterator[Found]:
        seen: set[str] = set()
        for query in queries:
            for taxon_id in self.taxon_ids(query):
                for found in self._observations(wnid, query, taxon_id, limit - len(seen)):
                    if found.source_id not in seen:
                        seen.add(str(found.source_id))
                        yield found
                    if len(seen) >= limit:
                        return

    def _observations(self, wnid: str, query: str, taxon_id: int, limit: int) -> Iterator[Found]:
        """Photos of the taxon's observations, newest id first, paged by ``id_below`` until none are left."""
        params: dict[str, Any] = {
            "taxon_id": taxon_id,
            "photos": "true",
            "quality_grade": self.quality,
            "photo_license": ",".join(self.licenses),
            "order_by": "id",
            "order": "desc",
            "per_page": max(1, min(self.per_page, limit)),
        }
        while True:
            data = self.client.get_json(f"{self.base}/observations", params)
            results = data.get("results") or []
            for observation in results:
                yield from self._photos(wnid, query, observation)
            remaining = data.get("total_results")  # counts what matches this request's id_below
            if not results or (remaining is not None and int(remaining) <= len(results)):
                return
            last = min(int(observation["id"]) for observation in results)
            if "id_below" in params and last >= params["id_below"]:
                raise SourceError(f"observation paging stuck at id_below={last}")
            params["id_below"] = last

    def _photos(self, wnid: str, query: str, observation: dict[str, Any]) -> Iterator[Found]:
        user = observation.get("user") or {}
        taxon = observation.get("taxon") or {}
        title = " / ".join(t for t in (taxon.get("name"), observation.get("species_guess")) if t) or None
        for photo in observation.get("photos") or []:
            code = photo.get("license_code")
            if code not in self.licenses or photo.get("hidden") or photo.get("flags") or not photo.get("url"):
                continue
            yield Found(
                wnid=wnid,
                source=NAME,
                source_id=str(photo["id"]),
                url=SIZE.sub(f"/{self.size}.", photo["url"], count=1),
                page_url=observation.get("uri") or f"https://www.inaturalist.org/photos/{photo['id']}",
                title=title,
                author=user.get("name") or user.get("login"),
                license=license_name(code),
                query=query,
            )
