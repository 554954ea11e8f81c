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
CHUNK_ROWS = 10_000  # Parquet rows per record batch: ~3 MB of row dicts at LAION-like row widths


def read_rows(path: Path, chunk_rows: int = CHUNK_ROWS) -> Iterator[dict[str, str]]:
    """The rows of a URL list, as dicts of strings (column names lower-cased), streamed: a Parquet
    file is read ``chunk_rows`` rows (one record batch) at a time, a CSV/TSV file line by line, so
    memory is bounded by a chunk, not by the list."""
    path = Path(path)
    if not path.is_file():
        raise CurationError(f"--urls {path}: no such file")
    rows = _parquet_rows(path, chunk_rows) if path.suffix.lower() == ".parquet" else _text_rows(path)
    return ({str(k).strip().lower(): ("" if v is None else str(v).strip()) for k, v in row.items()} for row in rows)


def _check_columns(path: Path, columns: list[str]) -> None:
    names = {str(c).strip().lower() for c in columns}
    if not {"url", "wnid"} <= names:
        raise CurationError(f"--urls {path}: needs `url` and `wnid` columns, has {sorted(names)}")


def _parquet_rows(path: Path, chunk_rows: int) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
        _check_columns(path, reader.schema_arrow.names)
        for batch in reader.iter_batches(batch_size=chunk_rows):
            yield from batch.to_pylist()
    except CurationError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise CurationError(f"--urls {path}: not a readable Parquet file: {exc}") from None


def _text_rows(path: Path) -> Iterator[dict]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            if reader.fieldnames is not None:
                _check_columns(path, list(reader.fieldnames))
            yield from reader
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CurationError(f"--urls {path}: cannot read: {exc}") from None


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
