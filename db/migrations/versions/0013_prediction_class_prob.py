"""predictions.class_prob and class_rank: the pair's own class under the run's rule

The filter writes, from the same logits as its decision, the softmax probability of the pair's class
over the rule's label space (the 200 classes for ImageNet-A) and its rank (1 = the argmax): what review
ordering needs. Older rows cannot get it from ``top5`` (a 1000-way probability is not a 200-way one),
so they stay NULL and this migration counts them into ``catalog_meta`` ("filter:class-prob-missing");
every filter run then names `curation filter --rescore`, which fills them and drops the count.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 08:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

MISSING = "filter:class-prob-missing"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("class_prob", sa.Float(), nullable=True))
        batch.add_column(sa.Column("class_rank", sa.Integer(), nullable=True))
    bind = op.get_bind()
    missing = bind.execute(
        sa.text("SELECT count(*) FROM predictions WHERE status = 'ok' AND rule IN ('restricted', 'top1')")
    ).scalar()
    if missing:
        bind.execute(
            sa.text("INSERT INTO catalog_meta (key, value) VALUES (:key, :value)"),
            {"key": MISSING, "value": str(missing)},
        )


def downgrade() -> None:
    op.get_bind().execute(sa.text("DELETE FROM catalog_meta WHERE key = :key"), {"key": MISSING})
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("class_rank")
        batch.drop_column("class_prob")
