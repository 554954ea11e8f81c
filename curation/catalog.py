"""The catalog: the one module that knows the schema.

Every stage reads what it needs from here and writes its own table. The schema is a
SQLAlchemy 2 typed ORM; changes go through the Alembic migrations in ``db/migrations``.
SQLite (the default) runs in WAL mode with foreign keys on; any SQLAlchemy URL works.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    func,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from curation.dialect import catalog_lock, fit_object
from curation.errors import CurationError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = PROJECT_ROOT / "db" / "migrations"

# Candidate statuses (crawl stage).
PENDING, DOWNLOADED, FAILED, SKIPPED = "pending", "downloaded", "failed", "skipped"
# Dedup statuses.
REPRESENTATIVE, DUPLICATE, LEAKED = "representative", "duplicate", "leaked"
# Annotation verdicts.
# "in_distribution" (ImageNet-O review: the photo shows one of the 1,000 ImageNet classes) rejects.
VERDICTS = ("accept", "wrong_class", "ambiguous", "low_quality", "inappropriate", "skip", "in_distribution")


def utcnow() -> datetime:
    """Timezone-naive UTC now (SQLite stores no zone)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


@event.listens_for(Base, "before_insert", propagate=True)
@event.listens_for(Base, "before_update", propagate=True)
def _fit_strings(_mapper: Any, _connection: Any, target: Base) -> None:
    """Web-sourced strings are cut to their ``String(n)`` columns (PostgreSQL enforces the length)."""
    fit_object(target)


# --------------------------------------------------------------------------- classes


class ImageClass(Base):
    """A class of the dataset: an ImageNet-1k/21k synset."""

    __tablename__ = "classes"

    wnid: Mapped[str] = mapped_column(String(16), primary_key=True)
    index_1k: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    gloss: Mapped[str] = mapped_column(Text, default="")
    origin: Mapped[str] = mapped_column(String(32), default="imagenet_a")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SearchQuery(Base):
    """One search query of a class (a WordNet lemma or a hand-written disambiguation)."""

    __tablename__ = "search_queries"
    __table_args__ = (UniqueConstraint("wnid", "query"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    wnid: Mapped[str] = mapped_column(ForeignKey("classes.wnid", ondelete="CASCADE"), index=True)
    query: Mapped[str] = mapped_column(String(300))
    position: Mapped[int] = mapped_column(Integer, default=0)


# --------------------------------------------------------------------------- crawl


class Candidate(Base):
    """One discovered image URL for one class, with its provenance and download status."""

    __tablename__ = "candidates"
    __table_args__ = (
        UniqueConstraint("wnid", "url"),
        Index("ix_candidates_status", "status"),
        Index("ix_candidates_image_wnid_status", "image_sha256", "wnid", "status"),
        Index("ix_candidates_url_status", "url", "status"),  # the crawl's known-URL check
        Index("ix_candidates_download_seq", "download_seq"),  # the filter's "downloaded since" range
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    wnid: Mapped[str] = mapped_column(ForeignKey("classes.wnid"))  # indexed by the (wnid, url) constraint
    source: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str | None] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(Text)
    final_url: Mapped[str | None] = mapped_column(Text)  # where the stored bytes came from, after redirects
    page_url: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(Text)
    license: Mapped[str | None] = mapped_column(String(100))
    query: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    reason: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    image_sha256: Mapped[str | None] = mapped_column(ForeignKey("images.sha256"))  # see ix_candidates_image_wnid_status
    download_seq: Mapped[int | None] = mapped_column(Integer)  # the crawl batch that downloaded it (counters.py)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Image(Base):
    """A stored image, named by the SHA-256 of its original bytes."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the data directory
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str | None] = mapped_column(String(16))
    multi_class: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# --------------------------------------------------------------------------- filter


class Prediction(Base):
    """One model's output on one image, judged against one class."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("sha256", "wnid", "model", "weights_hash", "rule"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    wnid: Mapped[str] = mapped_column(ForeignKey("classes.wnid"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    weights_hash: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(16))  # "restricted" | "top1"
    status: Mapped[str] = mapped_column(String(16), default="ok")  # "ok" | "failed"
    error: Mapped[str | None] = mapped_column(Text)
    top5: Mapped[str | None] = mapped_column(Text)  # JSON [[index, prob], ...] over the full label space
    pred_index: Mapped[int | None] = mapped_column(Integer)
    pred_wnid: Mapped[str | None] = mapped_column(String(16))
    confidence: Mapped[float | None] = mapped_column(Float)
    margin: Mapped[float | None] = mapped_column(Float)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    # The pair's own class under the rule (restricted 200-way for ImageNet-A): softmax probability and
    # rank (1 = the argmax), for ordering review. NULL for failed rows and ImageNet-O source classes
    # (no such probability), and for rows older than migration 0013 until `filter --rescore`.
    class_prob: Mapped[float | None] = mapped_column(Float)
    class_rank: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class FilterVerdict(Base):
    """The filter stage's decision for an (image, class) pair, combining its models."""

    __tablename__ = "filter_verdicts"
    __table_args__ = (
        Index(
            "ix_filter_verdicts_kept",
            "sha256",
            "wnid",
            sqlite_where=text("kept IS 1"),  # as kept.is_(True) renders: see migration 0007
            postgresql_where=text("kept IS true"),
        ),
        Index(
            "ix_filter_verdicts_kept_class",
            "wnid",
            "sha256",
            sqlite_where=text("kept IS 1"),
            postgresql_where=text("kept IS true"),
        ),
    )

    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), primary_key=True)
    wnid: Mapped[str] = mapped_column(ForeignKey("classes.wnid"), primary_key=True)
    kept: Mapped[bool] = mapped_column(Boolean)
    models: Mapped[str] = mapped_column(Text)  # JSON list of "model@weights_hash"
    keep_rule: Mapped[str] = mapped_column(String(16))  # "all-wrong" | "any-wrong"
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


# --------------------------------------------------------------------------- dedup


class PerceptualHash(Base):
    """64-bit perceptual hashes of an image (stored as signed 64-bit integers)."""

    __tablename__ = "perceptual_hashes"
    __table_args__ = (
        Index(  # the images dedup has not clustered yet: a rerun finds them without a scan (migration 0008)
            "ix_perceptual_hashes_unclustered",
            "sha256",
            sqlite_where=text("clustered IS 0"),
            postgresql_where=text("clustered IS false"),
        ),
    )

    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), primary_key=True)
    phash: Mapped[int] = mapped_column(BigInteger)
    dhash: Mapped[int] = mapped_column(BigInteger)
    phash_mirror: Mapped[int] = mapped_column(BigInteger)  # of the horizontally mirrored image
    dhash_mirror: Mapped[int] = mapped_column(BigInteger)
    # (pHash, dHash) of the six other orientations (rotations, their mirrors): 12 big-endian uint64
    # (curation.hashing.pack_extra); NULL until `dedup --orientations 8` hashes them (rows before 0004 too).
    orientation_hashes: Mapped[bytes | None] = mapped_column(LargeBinary)
    clustered: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # by dedup, into the index
    # Times the crawl found the image again (clearing clustered); dedup marks a row clustered only at
    # the count it read, so a re-find during its run is decided by the next one (migration 0012).
    refound: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DedupStatus(Base):
    """Where an image stands after dedup: representative, duplicate (of another) or leaked."""

    __tablename__ = "dedup_status"

    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    # sha256 of the representative; indexed: a dedup rerun reads the clusters new images join by it
    cluster_id: Mapped[str | None] = mapped_column(String(64), index=True)
    label_conflict: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)  # why an image could not be hashed (status "failed")
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class DuplicateLink(Base):
    """A near-duplicate pair: a crawled image and the image (or reference item) it repeats."""

    __tablename__ = "duplicate_links"
    __table_args__ = (UniqueConstraint("sha256", "other", "reference"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    other: Mapped[str] = mapped_column(Text)  # sha256 of a crawled image, or a reference item key
    reference: Mapped[str | None] = mapped_column(String(100))  # reference set name, None = crawl
    hash_kind: Mapped[str] = mapped_column(String(16))  # a hash orientation, or how a link was proved: embed+orb
    distance: Mapped[int] = mapped_column(Integer)  # Hamming bits; for a proved link the verifier's evidence count
    score: Mapped[float | None] = mapped_column(Float)  # the verifier's score of a proved link (migration 0016)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class PossibleCopy(Base):
    """An embedding proposal the verifier scored just below its threshold (or could not decide for too
    few keypoints): shown for review as "possible copy of ...", never a link (migration 0016)."""

    __tablename__ = "possible_copies"
    __table_args__ = (UniqueConstraint("sha256", "other", "reference"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    other: Mapped[str] = mapped_column(Text)  # sha256 of a crawled image, or a reference item key
    reference: Mapped[str | None] = mapped_column(String(100))  # reference set name, None = crawl
    kind: Mapped[str] = mapped_column(String(32))  # e.g. embed+orb, or embed+orb:few-keypoints
    score: Mapped[float] = mapped_column(Float)
    cosine: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ReferenceSet(Base):
    """A reference collection (e.g. ImageNet train) whose hashes live in a compact file."""

    __tablename__ = "reference_sets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    root: Mapped[str | None] = mapped_column(Text)
    hash_file: Mapped[str] = mapped_column(Text)  # relative to the data directory
    count: Mapped[int] = mapped_column(Integer, default=0)
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    # The embeddings beside the hashes: model@weights_hash and items embedded (migration 0017).
    embed_model: Mapped[str | None] = mapped_column(Text)
    embed_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


# --------------------------------------------------------------------------- annotate


class Annotation(Base):
    """One annotator's verdict on an (image, class) pair."""

    __tablename__ = "annotations"
    __table_args__ = (UniqueConstraint("sha256", "wnid", "annotator"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    wnid: Mapped[str] = mapped_column(ForeignKey("classes.wnid"), index=True)
    annotator: Mapped[str] = mapped_column(String(100))
    verdict: Mapped[str] = mapped_column(String(32))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ReviewCount(Base):
    """How many reviewable pairs of a class hold ``votes`` non-skip verdicts (``annotator`` = ''),
    and how many of them ``annotator`` has a verdict on: the review queue's sizes in O(classes).
    Derived: triggers keep it exact in every transaction that writes verdicts, filter verdicts or
    dedup statuses (migration 0009); a catalog copy rebuilds it instead of copying it."""

    __tablename__ = "review_counts"
    __table_args__ = (
        Index("ix_review_counts_zero", "annotator", sqlite_where=text("pairs = 0"), postgresql_where=text("pairs = 0")),
        {"info": {"derived": True}},
    )

    annotator: Mapped[str] = mapped_column(String(100), primary_key=True)
    wnid: Mapped[str] = mapped_column(String(16), primary_key=True)
    votes: Mapped[int] = mapped_column(Integer, primary_key=True)
    pairs: Mapped[int] = mapped_column(Integer)


# review_queue.tier: the pair needs another vote (it has some) / has none / the consensus rule is done.
MORE, FRESH, CLOSED = 0, 1, 2


class ReviewQueue(Base):
    """One row per reviewable pair, indexed by where it stands (``tier``, ``score``), so a review page
    reads only the pairs it serves (migration 0014). Triggers keep the rows and their vote counts;
    the review server closes a pair (``tier`` = CLOSED, ``outcome``) under the consensus rule and
    writes ``score`` (the serving priority) and ``drawn`` (served as the random share)."""

    __tablename__ = "review_queue"
    __table_args__ = (
        Index("ix_review_queue_order", "tier", "score"),
        Index("ix_review_queue_hash", "tier", "sha256", "wnid"),
        Index("ix_review_queue_class", "wnid", "tier", "score"),
        Index("ix_review_queue_sweep", "tier", "scored"),
        {"info": {"derived": True}},
    )

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    wnid: Mapped[str] = mapped_column(String(16), primary_key=True)
    votes: Mapped[int] = mapped_column(Integer)  # non-skip verdicts
    accepts: Mapped[int] = mapped_column(Integer)
    tier: Mapped[int] = mapped_column(Integer)  # MORE | FRESH | CLOSED
    outcome: Mapped[str | None] = mapped_column(String(16))  # "accept" | "reject" once CLOSED
    score: Mapped[float] = mapped_column(Float)  # serving priority, higher first
    scored: Mapped[int] = mapped_column(Integer)  # the learned model's version that wrote score (0: the filter's)
    drawn: Mapped[bool] = mapped_column(Boolean)  # served as the random share


# --------------------------------------------------------------------------- release


class Release(Base):
    """A written dataset release."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    version: Mapped[str] = mapped_column(String(50))
    out_dir: Mapped[str] = mapped_column(Text)
    n_images: Mapped[int] = mapped_column(Integer, default=0)
    archive_sha256: Mapped[str | None] = mapped_column(String(64))
    settings: Mapped[str | None] = mapped_column(Text)  # JSON
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ReleaseItem(Base):
    """One image of a release."""

    __tablename__ = "release_items"
    __table_args__ = (UniqueConstraint("release_id", "sha256", "wnid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    wnid: Mapped[str] = mapped_column(ForeignKey("classes.wnid"))
    file: Mapped[str] = mapped_column(Text)


class Meta(Base):
    """Key/value facts about the catalog itself (e.g. whether the recipe was seeded). Keys ending in
    ``secret`` hold credentials (the annotation session secret) and are never exported."""

    __tablename__ = "catalog_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


TABLES: dict[str, type[Base]] = {
    m.__tablename__: m
    for m in (
        ImageClass,
        SearchQuery,
        Candidate,
        Image,
        Prediction,
        FilterVerdict,
        PerceptualHash,
        DedupStatus,
        DuplicateLink,
        ReferenceSet,
        Annotation,
        Release,
        ReleaseItem,
        Meta,
    )
}


# --------------------------------------------------------------------------- engine and migrations


# SQLite's page cache per connection (KiB; filled only as pages are read). The default 2 MB holds a
# sliver of the hash-keyed indexes (images, candidates by image), so past ~100k rows every crawled URL
# read its random index pages again from the OS. Measured by benchmarks/crawl_growth.py, 5,000 new
# URLs into a catalog of 300,000 downloaded rows: 445 -> 179 MiB read through syscalls (see README).
SQLITE_CACHE_KIB = 64 * 1024


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL needs the lock it waits for
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout; its folder is created."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        db_path = Path(url[len("sqlite:///") :])
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CurationError(f"cannot create the catalog folder {db_path.parent}: {exc.strerror}") from None
    try:
        engine = create_engine(url, future=True, pool_pre_ping=url.startswith("postgresql"))
    except ImportError as exc:
        hint = " (pip install 'curation[postgres]')" if url.startswith("postgresql") else ""
        raise CurationError(f"cannot use the catalog URL {_hide_password(url)}: {exc}{hint}") from None
    except (SQLAlchemyError, ValueError) as exc:
        raise CurationError(f"bad catalog URL {_hide_password(url)}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name != "postgresql":
        raise CurationError(f"the catalog must be SQLite or PostgreSQL, not {engine.dialect.name}")
    return engine


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return "(unparsable URL)"


def database_error(engine: Engine, exc: SQLAlchemyError) -> CurationError:
    """One line naming the catalog (password hidden) and the database's own first line of reason."""
    reason = str(exc.orig) if getattr(exc, "orig", None) is not None else str(exc)
    first = next((line.strip() for line in reason.splitlines() if line.strip()), type(exc).__name__)
    return CurationError(f"cannot open the catalog {engine.url.render_as_string()}: {first}")


def _alembic_config(engine: Engine | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


@cache
def head_revision() -> str:
    """The newest migration revision shipped with this code."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the catalog is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision``, holding the catalog's migration lock."""
    with catalog_lock(engine, "migrate"):
        upgrade_locked(engine, revision)


class Catalog:
    """An open, migrated catalog: an engine plus a session factory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise


def open_catalog(url: str, *, auto_upgrade: bool = True) -> Catalog:
    """Open the catalog at ``url``, creating or upgrading its schema if needed (a new catalog's
    migrations seed the shipped class recipe). Race-free: any number of processes may open one
    fresh catalog at once; the first migrates under the catalog's migration lock, the others wait
    and find it done. With ``auto_upgrade`` off, an old catalog's error names the command to run."""
    engine = make_engine(url)
    try:
        head = head_revision()
        if current_revision(engine) != head:
            with catalog_lock(engine, "migrate"):
                current = current_revision(engine)
                if current != head:
                    if current is not None and not auto_upgrade:
                        raise CurationError(
                            f"the catalog is at schema {current}, this code needs {head}: run `curation db upgrade`"
                        )
                    if current is not None:
                        print(f"curation: upgrading catalog schema {current} -> {head}", file=sys.stderr)
                    upgrade_locked(engine)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise database_error(engine, exc) from None
    except CurationError:
        engine.dispose()
        raise
    return Catalog(engine)


def upgrade_locked(engine: Engine, revision: str = "head") -> None:
    """``upgrade`` for a caller that already holds the migration lock (``catalog_lock(engine, "migrate")``)."""
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


# --------------------------------------------------------------------------- reading helpers


def accepted_query(votes_needed: int = 1) -> Any:
    """SELECT (sha256, wnid) of the pairs accepted by annotation: at least a majority of
    ``votes_needed`` accepts and more accepts than other verdicts (skips do not count). One GROUP BY
    with HAVING over the (sha256, wnid, annotator) index: usable as a subquery."""
    from sqlalchemy import case

    accepts = func.sum(case((Annotation.verdict == "accept", 1), else_=0))
    return (
        select(Annotation.sha256, Annotation.wnid)
        .where(Annotation.verdict != "skip")
        .group_by(Annotation.sha256, Annotation.wnid)
        .having(accepts >= votes_needed // 2 + 1, 2 * accepts > func.count())
    )


def accepted_pairs(session: Session, votes_needed: int = 1) -> set[tuple[str, str]]:
    """(sha256, wnid) pairs accepted by annotation (see :func:`accepted_query`)."""
    return {(sha, wnid) for sha, wnid in session.execute(accepted_query(votes_needed))}


def funnel(session: Session, votes_needed: int = 1) -> list[dict[str, Any]]:
    """Per-class counts through the pipeline, one dict per class, in wnid order."""
    classes = session.execute(select(ImageClass.wnid, ImageClass.name).order_by(ImageClass.wnid)).all()
    counts: dict[str, dict[str, int]] = {
        wnid: {"candidates": 0, "downloaded": 0, "failed": 0, "kept": 0, "unique": 0, "accepted": 0, "released": 0}
        for wnid, _ in classes
    }

    def add(column: str, rows: Any) -> None:
        for wnid, n in rows:
            if wnid in counts:
                counts[wnid][column] += n

    add("candidates", session.execute(select(Candidate.wnid, func.count()).group_by(Candidate.wnid)))
    for status, column in ((DOWNLOADED, "downloaded"), (FAILED, "failed")):
        add(
            column,
            session.execute(
                select(Candidate.wnid, func.count()).where(Candidate.status == status).group_by(Candidate.wnid)
            ),
        )
    add(
        "kept",
        session.execute(
            select(FilterVerdict.wnid, func.count()).where(FilterVerdict.kept.is_(True)).group_by(FilterVerdict.wnid)
        ),
    )
    add(
        "unique",
        session.execute(
            select(FilterVerdict.wnid, func.count())
            .join(DedupStatus, DedupStatus.sha256 == FilterVerdict.sha256)
            .where(FilterVerdict.kept.is_(True), DedupStatus.status == REPRESENTATIVE)
            .group_by(FilterVerdict.wnid)
        ),
    )
    accepted = accepted_query(votes_needed).subquery()
    add("accepted", session.execute(select(accepted.c.wnid, func.count()).group_by(accepted.c.wnid)))
    latest = session.scalar(select(func.max(Release.id)))
    if latest is not None:
        add(
            "released",
            session.execute(
                select(ReleaseItem.wnid, func.count())
                .where(ReleaseItem.release_id == latest)
                .group_by(ReleaseItem.wnid)
            ),
        )
    return [{"wnid": wnid, "name": name, **counts[wnid]} for wnid, name in classes]


# --------------------------------------------------------------------------- export


def table_names() -> list[str]:
    """Names of every catalog table, in schema order."""
    return list(TABLES)


EXPORT_PAGE = 1000  # rows per fetch from the cursor while exporting


def export_table(catalog: Catalog, table: str, fmt: str, out: io.TextIOBase) -> int:
    """Write every row of ``table`` to ``out`` as CSV or JSON lines; returns the row count.

    Rows stream from a server-side cursor in pages of ``EXPORT_PAGE``: memory holds a page, not the table."""
    if table not in TABLES:
        raise CurationError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    model = TABLES[table]
    columns = [c.key for c in inspect(model).columns]
    query = select(*[getattr(model, c) for c in columns]).execution_options(yield_per=EXPORT_PAGE)
    if model is Meta:
        query = query.where(Meta.key.not_like("%secret"))
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(columns)
    n = 0
    with catalog.session() as session:
        for row in session.execute(query):
            values = [v.isoformat() if isinstance(v, datetime) else v for v in row]
            if writer is not None:
                writer.writerow(["" if v is None else v for v in values])
            else:
                out.write(json.dumps(dict(zip(columns, values, strict=True)), ensure_ascii=False) + "\n")
            n += 1
    return n
