"""perceptual_hashes.orientation_hashes: pHash and dHash of the six rotated/flipped orientations

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 00:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("perceptual_hashes") as batch_op:
        batch_op.add_column(sa.Column("orientation_hashes", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("perceptual_hashes") as batch_op:
        batch_op.drop_column("orientation_hashes")
