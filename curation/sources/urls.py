"""The ``urls`` source: a CSV, TSV or Parquet list of ``url,wnid[,license,author,page_url,title]``."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from curation.errors import CurationError
from curation.sources import Found, Skip

NAME = "urls"
OPTIONAL_COLUMNS = ("license", "author", "page_url", "title", "source_id")


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a URL list, as dicts of strings (column names lower-cased)."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"--urls {path}: no such file")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise CurationError(f"--urls {path}: not a readable Parquet file: {exc}") from None
        rows = table.to_pylist()
    else:
        delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                rows = list(csv.DictReader(fh, delimiter=delimiter))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise CurationError(f"--urls {path}: cannot read: {exc}") from None
    rows = [{str(k).strip().lower(): ("" if v is None else str(v).strip()) for k, v in row.items()} for row in rows]
    if rows and not {"url", "wnid"} <= set(rows[0]):
        raise CurationError(f"--urls {path}: needs `url` and `wnid` columns, has {sorted(rows[0])}")
    return rows


def discover(path: Path, classes: set[str]) -> Iterator[Found | Skip]:
    """One candidate per row whose class is known and whose URL is http(s)."""
    for row in read_rows(path):
        url, wnid = row.get("url", ""), row.get("wnid", "")
        if not url or not wnid:
            yield Skip("bad_row", repr(row))
        elif urlsplit(url).scheme.lower() not in ("http", "https"):
            yield Skip("bad_scheme", url)
        elif wnid not in classes:
            yield Skip("unknown_class", f"{wnid} {url}")
        else:
            extra = {k: row.get(k) or None for k in OPTIONAL_COLUMNS}
            yield Found(wnid=wnid, source=NAME, url=url, query=None, **extra)
