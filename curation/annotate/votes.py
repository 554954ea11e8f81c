"""Writing verdicts: one row per (image, class, annotator), upserted so no vote is ever lost,
plus the CSV export/import for offline or external tools."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from curation.annotate.queue import is_sha256
from curation.catalog import VERDICTS, Annotation, Image, ImageClass, utcnow
from curation.dialect import upsert
from curation.errors import CurationError

CSV_COLUMNS = ("sha256", "wnid", "annotator", "verdict", "note", "created_at")
ANNOTATOR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
MAX_NOTE = 2000
# One row per (image, class, annotator); a new vote replaces these fields of the old one.
VOTE_KEY = ["sha256", "wnid", "annotator"]
VOTE_FIELDS = ["verdict", "note", "created_at"]
IMPORT_CHUNK = 500  # CSV rows per lookup: one IN (...) of hashes stays under SQLite's parameter limit


def check_annotator(name: str) -> str:
    """The annotator name, stripped; refuses anything but 1-64 letters, digits, ``. _ @ -``."""
    name = (name or "").strip()
    if not ANNOTATOR_RE.match(name):
        raise CurationError(
            f"bad annotator name {name[:70]!r}: use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit"
        )
    return name


def check_verdict(verdict: str) -> str:
    """The verdict, if it is one of ``catalog.VERDICTS``."""
    if verdict not in VERDICTS:
        raise CurationError(f"unknown verdict {verdict[:40]!r}; verdicts: {', '.join(VERDICTS)}")
    return verdict


def record_vote(
    session: Session, sha256: str, wnid: str, annotator: str, verdict: str, note: str | None = None
) -> None:
    """Set ``annotator``'s verdict on (sha256, wnid), replacing an earlier one."""
    note = (note or "").strip()[:MAX_NOTE] or None
    upsert(
        session,
        Annotation,
        {
            "sha256": sha256,
            "wnid": wnid,
            "annotator": check_annotator(annotator),
            "verdict": check_verdict(verdict),
            "note": note,
            "created_at": utcnow(),
        },
        keys=VOTE_KEY,
        update=VOTE_FIELDS,
    )


def undo_vote(session: Session, sha256: str, wnid: str, annotator: str) -> bool:
    """Remove ``annotator``'s verdict on (sha256, wnid); whether there was one."""
    result = session.execute(
        delete(Annotation).where(
            Annotation.sha256 == sha256, Annotation.wnid == wnid, Annotation.annotator == annotator
        )
    )
    return bool(result.rowcount)


def export_csv(session: Session, out: IO[str]) -> int:
    """Write every verdict as CSV (``CSV_COLUMNS``); returns the row count."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    n = 0
    rows = session.execute(
        select(
            Annotation.sha256,
            Annotation.wnid,
            Annotation.annotator,
            Annotation.verdict,
            Annotation.note,
            Annotation.created_at,
        ).order_by(Annotation.wnid, Annotation.sha256, Annotation.annotator)
    )
    for sha, wnid, annotator, verdict, note, created_at in rows:
        writer.writerow([sha, wnid, annotator, verdict, note or "", created_at.isoformat(timespec="seconds")])
        n += 1
    return n


@dataclass
class ImportResult:
    """What an import did: rows added, updated, left alone (older or equal) and rejected."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[str] = field(default_factory=list)  # "line N: reason"


def import_csv(session: Session, source: IO[str]) -> ImportResult:
    """Upsert the verdicts of a CSV written by ``export_csv`` (or by hand, same columns).

    A row replaces an existing verdict of the same annotator only when it is not older; bad
    rows are rejected with their line number and a reason, the good ones are all imported.
    The file is read in chunks of ``IMPORT_CHUNK`` rows; each chunk looks up only its own images
    and existing verdicts, so memory is bounded by a chunk, not by the catalog.
    """
    reader = csv.DictReader(source)
    header = reader.fieldnames or []
    missing = [c for c in CSV_COLUMNS if c not in header and c not in ("note", "created_at")]
    if missing:
        raise CurationError(
            f"annotation CSV lacks the column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}"
        )
    classes = set(session.scalars(select(ImageClass.wnid)))
    result = ImportResult()
    chunk: list[tuple[int, dict[str, str | None]]] = []
    for row in reader:
        chunk.append((reader.line_num, row))
        if len(chunk) >= IMPORT_CHUNK:
            _import_chunk(session, chunk, classes, result)
            chunk = []
    _import_chunk(session, chunk, classes, result)
    return result


def _import_chunk(
    session: Session, chunk: list[tuple[int, dict[str, str | None]]], classes: set[str], result: ImportResult
) -> None:
    if not chunk:
        return
    shas = list({(row.get("sha256") or "").strip().lower() for _line, row in chunk})
    images = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(shas))))
    existing = {
        (sha, wnid, annotator): (created_at, verdict, note)
        for sha, wnid, annotator, created_at, verdict, note in session.execute(
            select(
                Annotation.sha256,
                Annotation.wnid,
                Annotation.annotator,
                Annotation.created_at,
                Annotation.verdict,
                Annotation.note,
            ).where(Annotation.sha256.in_(list(images)))
        )
    }
    for line, row in chunk:
        try:
            values = _parse_row(row, images, classes)
        except CurationError as exc:
            result.rejected.append(f"line {line}: {exc}")
            continue
        key = (values["sha256"], values["wnid"], values["annotator"])
        old = existing.get(key)
        if old is None:
            result.added += 1
        elif values["created_at"] < old[0] or old[1:] == (values["verdict"], values["note"]):
            result.unchanged += 1
            continue
        else:
            result.updated += 1
        upsert(session, Annotation, values, keys=VOTE_KEY, update=VOTE_FIELDS)
        existing[key] = (values["created_at"], values["verdict"], values["note"])


def _parse_row(row: dict[str, str | None], images: set[str], classes: set[str]) -> dict:
    sha = (row.get("sha256") or "").strip().lower()
    wnid = (row.get("wnid") or "").strip()
    if not is_sha256(sha):
        raise CurationError(f"bad sha256 {sha[:70]!r}")
    if sha not in images:
        raise CurationError(f"image {sha[:12]}... is not in the catalog")
    if wnid not in classes:
        raise CurationError(f"class {wnid[:20]!r} is not in the catalog")
    created_text = (row.get("created_at") or "").strip()
    try:
        created_at = datetime.fromisoformat(created_text) if created_text else utcnow()
    except ValueError:
        raise CurationError(f"bad created_at {created_text[:40]!r} (expected ISO 8601)") from None
    if created_at.tzinfo is not None:
        created_at = created_at.astimezone(UTC).replace(tzinfo=None)
    return {
        "sha256": sha,
        "wnid": wnid,
        "annotator": check_annotator(row.get("annotator") or ""),
        "verdict": check_verdict((row.get("verdict") or "").strip()),
        "note": (row.get("note") or "").strip()[:MAX_NOTE] or None,
        "created_at": created_at,
    }
