"""candidates.download_seq: the crawl batch that marked a candidate downloaded

The crawl stamps each batch's downloaded candidates with the next value of the catalog's downloads
sequence (curation/counters.py). The filter then finds the pairs downloaded since its last complete run
with a range on this index, instead of walking every downloaded pair: at 100,000 scored pairs that walk
took ~0.5 s per run and grew with the catalog. The key only grows, so the crawl appends at the index's
right edge (no random pages, unlike the hash-keyed indexes 0010 dropped). Older rows stay NULL: a
filter without a record of its own walks them once, as before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 07:50:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("candidates") as batch:
        batch.add_column(sa.Column("download_seq", sa.Integer(), nullable=True))
    op.create_index("ix_candidates_download_seq", "candidates", ["download_seq"])


def downgrade() -> None:
    op.drop_index("ix_candidates_download_seq", table_name="candidates")
    with op.batch_alter_table("candidates") as batch:
        batch.drop_column("download_seq")
