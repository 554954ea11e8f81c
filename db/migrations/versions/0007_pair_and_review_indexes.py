"""indexes that keep the filter's pages, release provenance and the review queue O(what they return)

- candidates(image_sha256, wnid, status): the filter's pending pairs walk it in (sha256, wnid) order
  and stop at the page (or ``--limit``); release reads an item's candidates by image through it.
- filter_verdicts(sha256, wnid) and (wnid, sha256) WHERE kept: the review queue (mixed and class
  order) walks only kept pairs, not the discarded majority (the filter keeps a few % of what it scores).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 16:50:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_candidates_image_wnid_status", "candidates", ["image_sha256", "wnid", "status"])
    op.create_index(
        "ix_filter_verdicts_kept",
        "filter_verdicts",
        ["sha256", "wnid"],
        sqlite_where=sa.text("kept IS 1"),  # exactly as SQLAlchemy renders kept.is_(True): the planner
        postgresql_where=sa.text("kept IS true"),  # matches a partial index's WHERE term by its text
    )
    op.create_index(
        "ix_filter_verdicts_kept_class",
        "filter_verdicts",
        ["wnid", "sha256"],
        sqlite_where=sa.text("kept IS 1"),
        postgresql_where=sa.text("kept IS true"),
    )


def downgrade() -> None:
    op.drop_index("ix_filter_verdicts_kept_class", table_name="filter_verdicts")
    op.drop_index("ix_filter_verdicts_kept", table_name="filter_verdicts")
    op.drop_index("ix_candidates_image_wnid_status", table_name="candidates")
