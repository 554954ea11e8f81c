"""what a dedup rerun needs to read only the new images and the clusters they join

- perceptual_hashes.clustered (false until dedup clusters the image and adds it to its stored index)
  with a partial index on the false ones: the rerun finds its new images without a scan; rows that
  already have a dedup status (other than "failed") start as clustered.
- dedup_status(cluster_id): the rerun reads the stored clusters that new images join by their id.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 19:50:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("perceptual_hashes") as batch:
        batch.add_column(sa.Column("clustered", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute(
        "UPDATE perceptual_hashes SET clustered = true WHERE EXISTS (SELECT 1 FROM dedup_status "
        "WHERE dedup_status.sha256 = perceptual_hashes.sha256 AND dedup_status.status != 'failed')"
    )
    op.create_index(
        "ix_perceptual_hashes_unclustered",
        "perceptual_hashes",
        ["sha256"],
        sqlite_where=sa.text("clustered IS 0"),  # as SQLAlchemy renders clustered.is_(False): see 0007
        postgresql_where=sa.text("clustered IS false"),
    )
    op.create_index("ix_dedup_status_cluster_id", "dedup_status", ["cluster_id"])


def downgrade() -> None:
    op.drop_index("ix_dedup_status_cluster_id", table_name="dedup_status")
    op.drop_index("ix_perceptual_hashes_unclustered", table_name="perceptual_hashes")
    with op.batch_alter_table("perceptual_hashes") as batch:
        batch.drop_column("clustered")
