"""Outcomes into the catalog, in batches (images first, then their candidates): the driver is the
catalog's only writer. A batch's keys leave the write journal once it is committed."""

from __future__ import annotations

import time
from datetime import datetime

from sqlalchemy import func, select, update

from curation import counters, dedup, storage
from curation.catalog import DOWNLOADED, Candidate, Catalog, Image, utcnow
from curation.crawl.jobs import Outcome
from curation.crawl.summary import Summary
from curation.dialect import insert_ignore
from curation.store import image_key

FLUSH_EVERY = 200
FLUSH_SECONDS = 1.0


class OutcomeWriter:
    """Writes outcomes to the catalog every :data:`FLUSH_EVERY` outcomes or :data:`FLUSH_SECONDS`."""

    def __init__(self, catalog: Catalog, summary: Summary, journal: storage.WriteJournal) -> None:
        self.catalog = catalog
        self.summary = summary
        self.journal = journal
        self.batch: list[Outcome] = []
        self.last_flush = time.monotonic()

    def add(self, outcome: Outcome) -> None:
        self.batch.append(outcome)
        if len(self.batch) >= FLUSH_EVERY or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        now = utcnow()
        images = {o.image.sha256: o.image for o in batch if o.image is not None}
        updates = [_candidate_row(o, now) for o in batch]
        with self.catalog.session() as session:
            seq = counters.take_next(session, counters.DOWNLOADS)
            for row in updates:
                row["download_seq"] = seq if row["status"] == DOWNLOADED else None
            stored = set(session.scalars(select(Image.sha256).where(Image.sha256.in_(list(images)))))
            insert_ignore(session, Image, [_image_row(i, now) for i in images.values()])
            session.execute(update(Candidate), updates)
            shas = [u["image_sha256"] for u in updates if u["image_sha256"]]
            shared = (
                select(Candidate.image_sha256)
                .where(Candidate.image_sha256.in_(shas))
                .group_by(Candidate.image_sha256)
                .having(func.count(func.distinct(Candidate.wnid)) > 1)
            )
            session.execute(update(Image).where(Image.sha256.in_(shared)).values(multi_class=True))
            dedup.found_again(session, sorted(set(shas) - (set(images) - stored)))
        self.journal.recorded(image_key(i.sha256, i.ext) for i in images.values())
        self.summary.new_images += len(set(images) - stored)
        for o in batch:
            self.summary.outcomes[o.status] += 1
            if o.reason:
                self.summary.reasons[(o.status, o.reason)] += 1


def _candidate_row(o: Outcome, now: datetime) -> dict:
    sha = o.image.sha256 if o.image is not None else (o.detail if o.status == DOWNLOADED else None)
    return {
        "id": o.job.id,
        "status": o.status,
        "reason": o.reason,
        "last_error": None if o.status == DOWNLOADED else o.detail,
        "image_sha256": sha,
        "final_url": o.final_url,
        "attempts": o.job.attempts + 1,
        "updated_at": now,
    }


def _image_row(i: storage.ValidImage, now: datetime) -> dict:
    return {
        "sha256": i.sha256,
        "path": i.relative_path,
        "width": i.width,
        "height": i.height,
        "format": i.format,
        "bytes": i.size,
        "mode": i.mode,
        "multi_class": False,
        "created_at": now,
    }
