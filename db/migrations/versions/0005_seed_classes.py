"""seed the shipped ImageNet-A class recipe (a new catalog's classes, written under the migration lock)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:40:00
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    from curation.classes import seed_default_classes

    seed_default_classes(op.get_bind())  # a no-op on a catalog that was seeded before this revision


def downgrade() -> None:
    pass  # the classes stay: candidates and votes refer to them
