"""duplicate_links.score and possible_copies: links proved by geometric verification, and the band below

The embedding matcher (issue 25) proposes neighbours and a geometric verifier proves or refuses each;
a proved link is a ``duplicate_links`` row whose ``hash_kind`` names how it was found and proved
(e.g. ``embed+orb``) and whose ``score`` holds the verifier's score (NULL for hash links). A proposal
whose score falls in the documented band just below the verification threshold, or that has too few
keypoints to prove anything, is a ``possible_copies`` row: shown on the review page as "possible copy
of ...", never read as a link (no cluster, no leak flag).

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-07 11:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("duplicate_links") as batch:
        batch.add_column(sa.Column("score", sa.Float(), nullable=True))
    op.create_table(
        "possible_copies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("other", sa.Text(), nullable=False),
        sa.Column("reference", sa.String(length=100), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("cosine", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["sha256"], ["images.sha256"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256", "other", "reference"),
    )
    with op.batch_alter_table("possible_copies") as batch:
        batch.create_index("ix_possible_copies_sha256", ["sha256"], unique=False)


def downgrade() -> None:
    op.drop_table("possible_copies")
    with op.batch_alter_table("duplicate_links") as batch:
        batch.drop_column("score")
