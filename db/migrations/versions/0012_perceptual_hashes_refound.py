"""perceptual_hashes.refound: how often the crawl found an image again

The crawl clears ``clustered`` when it finds an image again (a new candidate: maybe another class or
licence), so the next dedup decides its cluster again. A dedup run that read the image before that
re-find must not mark it clustered afterwards: it marks only the rows it read, at the count it read,
and the crawl counts this column up. Existing rows start at 0 (a constant default: no table rewrite
on PostgreSQL, a plain ALTER TABLE ADD COLUMN on SQLite).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 08:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("perceptual_hashes") as batch:
        batch.add_column(sa.Column("refound", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("perceptual_hashes") as batch:
        batch.drop_column("refound")
