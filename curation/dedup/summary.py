"""The summary line and funnel of a dedup run, counted from the catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from curation.catalog import Catalog


@dataclass
class Summary:
    images: int = 0
    hashed_now: int = 0
    rehashed: int = 0
    failed: int = 0
    clusters: int = 0
    representatives: int = 0
    duplicates: int = 0
    leaked: int = 0
    label_conflicts: int = 0
    leaked_representatives: int = 0
    against: list[str] = field(default_factory=list)
    rule: str = ""  # the match rule in force, e.g. "pHash <= 10, dHash <= 14, 2 orientations"
    matchers: str = ""  # the matchers in force and the embedding model, e.g. "hash + embedding resnet50@..."
    embedded_now: int = 0
    unreadable_for_embedding: int = 0

    def line(self) -> str:
        refs = f" (against {', '.join(self.against)})" if self.against else ""
        rehashed = f"{self.rehashed} given rotated hashes, " if self.rehashed else ""
        return (
            f"dedup: {self.images} images, {self.hashed_now} hashed now, {rehashed}{self.failed} unreadable; "
            f"{self.clusters} near-duplicate clusters, {self.representatives} representatives, "
            f"{self.duplicates} duplicates, {self.leaked} leaked{refs}, {self.label_conflicts} in label conflicts"
            + (f" ({self.rule})" if self.rule else "")
            + (f"; matchers: {self.matchers}" if self.matchers else "")
            + (f", {self.embedded_now} embedded now" if self.embedded_now else "")
            + (f", {self.unreadable_for_embedding} unreadable for the model" if self.unreadable_for_embedding else "")
        )

    def funnel(self) -> str:
        hashed = self.images - self.failed
        unique = self.representatives + self.leaked_representatives
        return (
            f"funnel: {self.images} downloaded -> {hashed} hashed -> {unique} unique -> "
            f"{self.representatives} unique and not leaked"
        )


def summarise(catalog: Catalog) -> Summary:
    """The catalog-wide counts of the summary line: one pass over the statuses (conditional sums; a
    cluster's members share its leaked and label-conflict flags, and a cluster that is not leaked
    has one representative that names it) and a count of the images."""
    from sqlalchemy import and_, case, distinct, func, select

    from curation.catalog import DUPLICATE, LEAKED, REPRESENTATIVE, DedupStatus, Image

    def rows_where(*conditions: Any) -> Any:
        return func.coalesce(func.sum(case((and_(*conditions), 1), else_=0)), 0)

    status, cluster = DedupStatus.status, DedupStatus.cluster_id
    counts = select(
        rows_where(status == REPRESENTATIVE),
        rows_where(status == DUPLICATE),
        rows_where(status == LEAKED),
        rows_where(DedupStatus.label_conflict.is_(True)),
        rows_where(status == REPRESENTATIVE, cluster.is_not(None)),
        func.count(distinct(case((status == LEAKED, cluster)))),
        rows_where(status == LEAKED, cluster.is_(None)),
    )
    summary = Summary()
    with catalog.session() as session:
        summary.images = session.scalar(select(func.count()).select_from(Image)) or 0
        reps, dups, leaked, conflicts, kept_clusters, leaked_clusters, leaked_alone = session.execute(counts).one()
    summary.representatives, summary.duplicates, summary.leaked = int(reps), int(dups), int(leaked)
    summary.clusters, summary.label_conflicts = int(kept_clusters) + int(leaked_clusters), int(conflicts)
    summary.leaked_representatives = int(leaked_clusters) + int(leaked_alone)
    return summary
