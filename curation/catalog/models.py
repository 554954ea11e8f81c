"""The catalog's schema: SQLAlchemy 2 typed ORM models, one section per stage, and the status and
verdict vocabularies. Changes go through the Alembic migrations in ``db/migrations``."""

from __future__ import annotations

from datetime import UTC, datetime
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
    event,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from curation.dialect import fit_object

# Candidate statuses (crawl stage).
PENDING, DOWNLOADED, FAILED, SKIPPED = "pending", "downloaded", "failed", "skipped"
# Dedup statuses.
REPRESENTATIVE, DUPLICATE, LEAKED = "representative", "duplicate", "leaked"
# Annotation verdicts.
# "in_distribution" (ImageNet-O review: the photo shows one of the 1,000 ImageNet classes) rejects.
VERDICTS = (
    "accept",
    "wrong_class",
    "ambiguous",
    "low_quality",
    "inappropriate",
    "skip",
    "in_distribution",
    "duplicate",  # a copy of another image (the review pages' "possible copy of ...")
)


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
