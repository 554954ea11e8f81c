"""drop the two candidate indexes that another index already leads with

- ix_candidates_image_sha256: ix_candidates_image_wnid_status (0007) starts with image_sha256;
- ix_candidates_wnid: the unique (wnid, url) constraint's index starts with wnid.

Every crawled row updated both: each was one more B-tree page written per URL (random pages for the
hash). Measured by benchmarks/crawl_growth.py (5,000 new URLs into a catalog padded with 300,000
downloaded rows): see the README's Scale section.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 19:45:00.000000
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_candidates_image_sha256", table_name="candidates")
    op.drop_index("ix_candidates_wnid", table_name="candidates")


def downgrade() -> None:
    op.create_index("ix_candidates_wnid", "candidates", ["wnid"])
    op.create_index("ix_candidates_image_sha256", "candidates", ["image_sha256"])
