"""candidates.final_url: the URL a downloaded image finally came from, after redirects

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 23:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("candidates") as batch_op:
        batch_op.add_column(sa.Column("final_url", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("candidates") as batch_op:
        batch_op.drop_column("final_url")
