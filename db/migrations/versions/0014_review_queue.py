"""review_queue: the reviewable pairs themselves, indexed by where they stand, so a page costs O(page)

One row per reviewable pair (the filter kept it, dedup did not set its image aside), kept by
triggers on ``filter_verdicts`` and ``dedup_status`` (a pair set aside leaves the table, so no page
walks past it) and on ``annotations`` (``votes`` / ``accepts``: its non-skip and accept verdicts).
``tier`` says where the pair stands: 1 fresh (no vote), 0 open with votes (it needs another one,
or the consensus rule has not looked yet), 2 closed (the rule is done with it, ``outcome`` accept or
reject). A vote that changes the counts reopens the pair (tier 0, outcome NULL); the review server,
which knows the rule in force, closes it again (``curation.annotate.consensus``). ``score`` is the
serving priority (higher first): the filter's probability of the pair's own class
(``predictions.class_prob``, 0 where it has none) until the learned order scores it
(``scored``: the model version that did, 0 = the filter's). ``drawn`` marks the pairs served as
the random share, the basis of the estimate of accepts left.

Indexes: (tier, score) serves the learned order, (tier, sha256, wnid) the hash order and the
random draws, (wnid, tier, score) a class's grid page, (tier, scored) the re-scoring sweep.

Revision ID: 0014
Revises: 0017 (0016 and 0017 landed first; the numbers were handed out by concern)
Create Date: 2026-12-07 10:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0017"
branch_labels = None
depends_on = None

NOT_SET_ASIDE = "NOT EXISTS (SELECT 1 FROM dedup_status d WHERE d.sha256 = f.sha256 AND d.status <> 'representative')"


def _count(verdict: str, pair: str = "f") -> str:
    return (
        f"(SELECT count(*) FROM annotations a WHERE a.sha256 = {pair}.sha256 AND a.wnid = {pair}.wnid "
        f"AND a.verdict {verdict})"
    )


VOTES, ACCEPTS = _count("<> 'skip'"), _count("= 'accept'")
PRIOR = "(SELECT max(p.class_prob) FROM predictions p WHERE p.sha256 = f.sha256 AND p.wnid = f.wnid)"


def _insert(source: str, where: str) -> str:
    """Add the pairs ``f`` of ``source`` that satisfy ``where`` (already present: left alone)."""
    return (
        "INSERT INTO review_queue (sha256, wnid, votes, accepts, tier, score, scored, drawn) "
        f"SELECT f.sha256, f.wnid, {VOTES}, {ACCEPTS}, CASE WHEN {VOTES} = 0 THEN 1 ELSE 0 END, "
        f"coalesce({PRIOR}, 0), 0, false FROM {source} WHERE {where} "
        "ON CONFLICT (sha256, wnid) DO NOTHING"
    )


def _pair(row: str) -> str:
    return f"(SELECT {row}.sha256 AS sha256, {row}.wnid AS wnid) f"


def _recount(row: str) -> str:
    """Recount the votes of ``row``'s pair; reopen it when they changed (the server closes it again)."""
    votes, accepts = _count("<> 'skip'", "review_queue"), _count("= 'accept'", "review_queue")
    return (
        f"UPDATE review_queue SET votes = {votes}, accepts = {accepts}, "
        f"tier = CASE WHEN {votes} = 0 THEN 1 WHEN {votes} <> votes OR {accepts} <> accepts THEN 0 ELSE tier END, "
        f"outcome = CASE WHEN {votes} <> votes OR {accepts} <> accepts THEN NULL ELSE outcome END "
        f"WHERE sha256 = {row}.sha256 AND wnid = {row}.wnid"
    )


KEPT_PAIRS = "filter_verdicts f"


def _triggers() -> list[tuple[str, str, str, str, list[str]]]:
    """(name, table, event, condition, statements) of every trigger (all per row)."""
    drop_image = "DELETE FROM review_queue WHERE sha256 = {}.sha256"
    drop_pair = "DELETE FROM review_queue WHERE sha256 = {0}.sha256 AND wnid = {0}.wnid"
    return [
        ("review_queue_kept", "filter_verdicts", "INSERT", "NEW.kept", [_insert(_pair("NEW"), NOT_SET_ASIDE)]),
        (
            "review_queue_kept_changed",
            "filter_verdicts",
            "UPDATE",
            "OLD.kept <> NEW.kept",
            [_insert(_pair("NEW"), f"NEW.kept AND {NOT_SET_ASIDE}"), drop_pair.format("OLD") + " AND NOT NEW.kept"],
        ),
        ("review_queue_kept_removed", "filter_verdicts", "DELETE", "OLD.kept", [drop_pair.format("OLD")]),
        (
            "review_queue_set_aside",
            "dedup_status",
            "INSERT",
            "NEW.status <> 'representative'",
            [drop_image.format("NEW")],
        ),
        (
            "review_queue_status_changed",
            "dedup_status",
            "UPDATE",
            "(OLD.status = 'representative') <> (NEW.status = 'representative')",
            [
                _insert(KEPT_PAIRS, "f.sha256 = NEW.sha256 AND f.kept AND NEW.status = 'representative'"),
                drop_image.format("NEW") + " AND NEW.status <> 'representative'",
            ],
        ),
        (
            "review_queue_status_removed",
            "dedup_status",
            "DELETE",
            "OLD.status <> 'representative'",
            [_insert(KEPT_PAIRS, "f.sha256 = OLD.sha256 AND f.kept")],
        ),
        ("review_queue_vote_added", "annotations", "INSERT", "", [_recount("NEW")]),
        ("review_queue_vote_changed", "annotations", "UPDATE", "", [_recount("OLD"), _recount("NEW")]),
        ("review_queue_vote_removed", "annotations", "DELETE", "", [_recount("OLD")]),
        (
            "review_queue_prior",
            "predictions",
            "INSERT",
            "NEW.class_prob IS NOT NULL",
            [
                "UPDATE review_queue SET score = NEW.class_prob WHERE sha256 = NEW.sha256 AND wnid = NEW.wnid AND scored = 0"
            ],
        ),
        (
            "review_queue_prior_changed",
            "predictions",
            "UPDATE",
            "NEW.class_prob IS NOT NULL",
            [
                "UPDATE review_queue SET score = NEW.class_prob WHERE sha256 = NEW.sha256 AND wnid = NEW.wnid AND scored = 0"
            ],
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "review_queue",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("wnid", sa.String(length=16), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("accepts", sa.Integer(), nullable=False),
        sa.Column("tier", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("scored", sa.Integer(), nullable=False),
        sa.Column("drawn", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", "wnid"),
    )
    op.create_index("ix_review_queue_order", "review_queue", ["tier", "score"])
    op.create_index("ix_review_queue_hash", "review_queue", ["tier", "sha256", "wnid"])
    op.create_index("ix_review_queue_class", "review_queue", ["wnid", "tier", "score"])
    op.create_index("ix_review_queue_sweep", "review_queue", ["tier", "scored"])
    op.execute(_insert(KEPT_PAIRS, f"f.kept AND {NOT_SET_ASIDE}"))
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, table, event, condition, statements in _triggers():
        _create(name, table, event, condition, statements, postgres)


def _create(name: str, table: str, event: str, condition: str, statements: list[str], postgres: bool) -> None:
    body = "".join(f"{statement};\n" for statement in statements)
    if postgres:
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n{body}RETURN NULL;\nEND\n$$"
        )
        when = f" WHEN ({condition})" if condition else ""
        op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when} EXECUTE FUNCTION {name}()")
    else:
        when = f" WHEN {condition}" if condition else ""
        op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when}\nBEGIN\n{body}END")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, table, *_ in _triggers():
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgres else ""))
        if postgres:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    op.drop_table("review_queue")
