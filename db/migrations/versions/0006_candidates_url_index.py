"""candidates(url, status) index: the crawl's "already downloaded for some class?" check per URL

Without it each 500-URL check scans every downloaded row (O(new x catalog)).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:45:00.000000
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_candidates_url_status", "candidates", ["url", "status"])


def downgrade() -> None:
    op.drop_index("ix_candidates_url_status", table_name="candidates")
