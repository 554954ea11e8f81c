"""reference_sets.embed_model and embed_count: which model's embeddings a reference set holds

``dedup reference add`` embeds a set with dedup's embedding model (resumably, beside its hashes) and
builds its compressed index; these columns say with which model and weights (``name@weights_hash``)
and how many items are embedded, so a dedup run knows whether the set's embeddings fit its model and
whether its checks of the set are still current. NULL / 0: not embedded (a set from before, or an
imported hash file): the next run says so in one line and embeds it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 11:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reference_sets") as batch:
        batch.add_column(sa.Column("embed_model", sa.Text(), nullable=True))
        batch.add_column(sa.Column("embed_count", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("reference_sets") as batch:
        batch.drop_column("embed_count")
        batch.drop_column("embed_model")
