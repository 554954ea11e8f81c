"""stage tables: predictions, dedup, annotations, releases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 20:30:30.079632
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reference_sets",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("root", sa.Text(), nullable=True),
        sa.Column("hash_file", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=False),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("archive_sha256", sa.String(length=64), nullable=True),
        sa.Column("settings", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("wnid", sa.String(length=16), nullable=False),
        sa.Column("annotator", sa.String(length=100), nullable=False),
        sa.Column("verdict", sa.String(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["images.sha256"],
        ),
        sa.ForeignKeyConstraint(
            ["wnid"],
            ["classes.wnid"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256", "wnid", "annotator"),
    )
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_annotations_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_annotations_wnid"), ["wnid"], unique=False)

    op.create_table(
        "dedup_status",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cluster_id", sa.String(length=64), nullable=True),
        sa.Column("label_conflict", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["images.sha256"],
        ),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "duplicate_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("other", sa.Text(), nullable=False),
        sa.Column("reference", sa.String(length=100), nullable=True),
        sa.Column("hash_kind", sa.String(length=16), nullable=False),
        sa.Column("distance", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["images.sha256"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256", "other", "reference"),
    )
    with op.batch_alter_table("duplicate_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_duplicate_links_sha256"), ["sha256"], unique=False)

    op.create_table(
        "filter_verdicts",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("wnid", sa.String(length=16), nullable=False),
        sa.Column("kept", sa.Boolean(), nullable=False),
        sa.Column("models", sa.Text(), nullable=False),
        sa.Column("keep_rule", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["images.sha256"],
        ),
        sa.ForeignKeyConstraint(
            ["wnid"],
            ["classes.wnid"],
        ),
        sa.PrimaryKeyConstraint("sha256", "wnid"),
    )
    op.create_table(
        "perceptual_hashes",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("phash", sa.BigInteger(), nullable=False),
        sa.Column("dhash", sa.BigInteger(), nullable=False),
        sa.Column("phash_mirror", sa.BigInteger(), nullable=False),
        sa.Column("dhash_mirror", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["images.sha256"],
        ),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("wnid", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("weights_hash", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("top5", sa.Text(), nullable=True),
        sa.Column("pred_index", sa.Integer(), nullable=True),
        sa.Column("pred_wnid", sa.String(length=16), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("margin", sa.Float(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["images.sha256"],
        ),
        sa.ForeignKeyConstraint(
            ["wnid"],
            ["classes.wnid"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256", "wnid", "model", "weights_hash", "rule"),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_predictions_sha256"), ["sha256"], unique=False)
        batch_op.create_index(batch_op.f("ix_predictions_wnid"), ["wnid"], unique=False)

    op.create_table(
        "release_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("wnid", sa.String(length=16), nullable=False),
        sa.Column("file", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["images.sha256"],
        ),
        sa.ForeignKeyConstraint(
            ["wnid"],
            ["classes.wnid"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("release_id", "sha256", "wnid"),
    )
    with op.batch_alter_table("release_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_release_items_release_id"), ["release_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("release_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_items_release_id"))

    op.drop_table("release_items")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_predictions_wnid"))
        batch_op.drop_index(batch_op.f("ix_predictions_sha256"))

    op.drop_table("predictions")
    op.drop_table("perceptual_hashes")
    op.drop_table("filter_verdicts")
    with op.batch_alter_table("duplicate_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_duplicate_links_sha256"))

    op.drop_table("duplicate_links")
    op.drop_table("dedup_status")
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_annotations_wnid"))
        batch_op.drop_index(batch_op.f("ix_annotations_sha256"))

    op.drop_table("annotations")
    op.drop_table("releases")
    op.drop_table("reference_sets")
