"""review_counts: the review queue's sizes, kept exact by triggers, so a page counts in O(classes)

A pair (image, class) is reviewable when the filter kept it and dedup did not set its image aside
(no status, or ``representative``). ``review_counts`` holds, per class and number of non-skip votes
``votes``, how many reviewable pairs there are (``annotator`` = '') and how many of them each
annotator has a verdict on: what an annotator has left to review with ``votes_needed`` = V is
sum(pairs of '', votes < V) - sum(pairs of the annotator, votes < V). Triggers on
``filter_verdicts``, ``dedup_status`` and ``annotations`` move a pair's counts when it becomes
reviewable or not, or when its votes change, in the writing transaction, whoever writes (the
stages, imports, a catalog copy); rows that reach 0 are deleted, so the table is a function of the
catalog. On PostgreSQL the vote triggers run per statement on its transition tables (one statement
may hold several votes of a pair); the others per row. Updates that change the key of a filter
verdict or a dedup status are refused (nothing does that). A later migration that recreates one of the three tables (SQLite
batch "move and copy") must recreate these triggers.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 19:45:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

REVIEWABLE = "NOT EXISTS (SELECT 1 FROM dedup_status d WHERE d.sha256 = f.sha256 AND d.status <> 'representative')"
KEPT = "EXISTS (SELECT 1 FROM filter_verdicts k WHERE k.sha256 = f.sha256 AND k.wnid = f.wnid AND k.kept)"


def _move(sign: int, source: str, where: str) -> list[str]:
    """Add ``sign`` to the counts of the pairs ``f`` of ``source`` that satisfy ``where`` (their
    votes unchanged): the pair's row and one per annotator with a verdict on it. Then drop the rows
    at 0."""
    votes = "(SELECT count(*) FROM annotations v WHERE v.sha256 = f.sha256 AND v.wnid = f.wnid AND v.verdict <> 'skip')"
    rows = (
        f"SELECT '' AS annotator, f.wnid AS wnid, {votes} AS votes, {sign} AS pairs FROM {source} WHERE {where} "
        f"UNION ALL SELECT a.annotator, f.wnid, {votes}, {sign} FROM {source} "
        f"JOIN annotations a ON a.sha256 = f.sha256 AND a.wnid = f.wnid WHERE {where}"
    )
    return _add(rows)


def _add(rows: str) -> list[str]:
    return [
        "INSERT INTO review_counts (annotator, wnid, votes, pairs) "
        f"SELECT x.annotator, x.wnid, x.votes, sum(x.pairs) FROM ({rows}) x WHERE true "
        "GROUP BY x.annotator, x.wnid, x.votes HAVING sum(x.pairs) <> 0 "
        "ON CONFLICT (annotator, wnid, votes) DO UPDATE SET pairs = review_counts.pairs + excluded.pairs",
        "DELETE FROM review_counts WHERE pairs = 0",  # through the partial index on the rows at 0
    ]


VOTE_COLUMNS = ("sha256", "wnid", "annotator", "verdict")
NO_VOTES = "(SELECT " + ", ".join(f"NULL AS {c}" for c in VOTE_COLUMNS) + " WHERE 1 = 0)"


def _one_vote(row: str) -> str:
    return "(SELECT " + ", ".join(f"{row}.{c} AS {c}" for c in VOTE_COLUMNS) + ")"


def _votes_changed(added: str, removed: str) -> list[str]:
    """Move the counts of every pair that gained the votes ``added`` and lost ``removed`` (two row
    sets, SELECTs of VOTE_COLUMNS): its counts with the votes of now, minus those with the votes of
    before (now's without ``added``, plus ``removed``). Written for any number of rows, so that it
    serves a PostgreSQL statement-level trigger (its transition tables) as well as an SQLite row
    trigger (one NEW / OLD row)."""
    pairs = f"(SELECT sha256, wnid FROM {added} ad UNION SELECT sha256, wnid FROM {removed} rm) f"
    now = "(SELECT sha256, wnid, annotator, verdict FROM annotations)"
    before = (
        "(SELECT b.sha256, b.wnid, b.annotator, b.verdict FROM annotations b WHERE NOT EXISTS (SELECT 1 FROM "
        f"{added} n WHERE n.sha256 = b.sha256 AND n.wnid = b.wnid AND n.annotator = b.annotator) "
        f"UNION ALL SELECT sha256, wnid, annotator, verdict FROM {removed} o)"
    )
    reviewable = f"{KEPT} AND {REVIEWABLE}"

    def counted(votes: str, sign: int) -> str:
        tally = (
            f"(SELECT count(*) FROM {votes} s WHERE s.sha256 = f.sha256 AND s.wnid = f.wnid AND s.verdict <> 'skip')"
        )
        return (
            f"SELECT '' AS annotator, f.wnid AS wnid, {tally} AS votes, {sign} AS pairs FROM {pairs} WHERE {reviewable} "
            f"UNION ALL SELECT e.annotator, f.wnid, {tally}, {sign} FROM {pairs} "
            f"JOIN {votes} e ON e.sha256 = f.sha256 AND e.wnid = f.wnid WHERE {reviewable}"
        )

    return _add(f"{counted(now, 1)} UNION ALL {counted(before, -1)}")


def _triggers(postgres: bool) -> list[tuple[str, str, str, str, list[str]]]:
    """(name, table, event, condition, statements) of every trigger; PostgreSQL's vote triggers
    are per statement (``added_votes`` / ``removed_votes``: its transition tables)."""
    same_pair = "OLD.sha256 = NEW.sha256 AND OLD.wnid = NEW.wnid"
    image = "filter_verdicts f"
    new_pairs, old_pairs = "f.sha256 = NEW.sha256 AND f.kept", "f.sha256 = OLD.sha256 AND f.kept"
    added, removed = ("added_votes", "removed_votes") if postgres else (_one_vote("NEW"), _one_vote("OLD"))
    return [
        ("review_counts_votes_added", "annotations", "INSERT", "", _votes_changed(added, NO_VOTES)),
        ("review_counts_votes_changed", "annotations", "UPDATE", "", _votes_changed(added, removed)),
        ("review_counts_votes_removed", "annotations", "DELETE", "", _votes_changed(NO_VOTES, removed)),
        ("review_counts_kept", "filter_verdicts", "INSERT", "NEW.kept", _move(1, _pair("NEW"), REVIEWABLE)),
        (
            "review_counts_kept_changed",
            "filter_verdicts",
            "UPDATE",
            f"{same_pair} AND OLD.kept <> NEW.kept",
            _move(1, _pair("NEW"), f"NEW.kept AND {REVIEWABLE}")
            + _move(-1, _pair("NEW"), f"OLD.kept AND {REVIEWABLE}"),
        ),
        ("review_counts_kept_removed", "filter_verdicts", "DELETE", "OLD.kept", _move(-1, _pair("OLD"), REVIEWABLE)),
        (
            "review_counts_set_aside",
            "dedup_status",
            "INSERT",
            "NEW.status <> 'representative'",
            _move(-1, image, new_pairs),
        ),
        (
            "review_counts_status_changed",
            "dedup_status",
            "UPDATE",
            "OLD.sha256 = NEW.sha256 AND (OLD.status = 'representative') <> (NEW.status = 'representative')",
            _move(1, image, f"{new_pairs} AND NEW.status = 'representative'")
            + _move(-1, image, f"{new_pairs} AND OLD.status = 'representative'"),
        ),
        (
            "review_counts_status_removed",
            "dedup_status",
            "DELETE",
            "OLD.status <> 'representative'",
            _move(1, image, old_pairs),
        ),
    ]


def _pair(row: str) -> str:
    return f"(SELECT {row}.sha256 AS sha256, {row}.wnid AS wnid) f"


KEY_CHANGES = {
    "filter_verdicts": "OLD.sha256 <> NEW.sha256 OR OLD.wnid <> NEW.wnid",
    "dedup_status": "OLD.sha256 <> NEW.sha256",
}
REFUSAL = "review_counts: the key of a {} row cannot change (delete it and insert the new one)"

# The counts from scratch: every reviewable pair with its non-skip votes, and its annotators.
RECOUNT = f"""
INSERT INTO review_counts (annotator, wnid, votes, pairs)
SELECT x.annotator, x.wnid, x.votes, count(*) FROM (
    SELECT '' AS annotator, f.wnid AS wnid, (SELECT count(*) FROM annotations v WHERE v.sha256 = f.sha256
        AND v.wnid = f.wnid AND v.verdict <> 'skip') AS votes
    FROM filter_verdicts f WHERE f.kept AND {REVIEWABLE}
    UNION ALL
    SELECT a.annotator, f.wnid, (SELECT count(*) FROM annotations v WHERE v.sha256 = f.sha256
        AND v.wnid = f.wnid AND v.verdict <> 'skip')
    FROM filter_verdicts f JOIN annotations a ON a.sha256 = f.sha256 AND a.wnid = f.wnid
    WHERE f.kept AND {REVIEWABLE}
) x GROUP BY x.annotator, x.wnid, x.votes
"""


def upgrade() -> None:
    op.create_table(
        "review_counts",
        sa.Column("annotator", sa.String(length=100), nullable=False),
        sa.Column("wnid", sa.String(length=16), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("annotator", "wnid", "votes"),
    )
    op.create_index(
        "ix_review_counts_zero",
        "review_counts",
        ["annotator"],
        sqlite_where=sa.text("pairs = 0"),
        postgresql_where=sa.text("pairs = 0"),
    )
    op.execute(RECOUNT)
    postgres = op.get_bind().dialect.name == "postgresql"
    for name, table, event, condition, statements in _triggers(postgres):
        _create(name, table, event, condition, statements, postgres)
    for table, condition in KEY_CHANGES.items():
        refuse = REFUSAL.format(table)
        body = [f"RAISE EXCEPTION '{refuse}'"] if postgres else [f"SELECT RAISE(ABORT, '{refuse}')"]
        _create(f"review_counts_{table}_key", table, "UPDATE", condition, body, postgres, before=True)


def _create(
    name: str, table: str, event: str, condition: str, statements: list[str], postgres: bool, before: bool = False
) -> None:
    timing = "BEFORE" if before else "AFTER"
    if postgres:
        body = "".join(f"{statement};\n" for statement in statements)
        op.execute(
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n{body}RETURN NULL;\nEND\n$$"
        )
        when = f" WHEN ({condition})" if condition else ""
        if table == "annotations":  # per statement: one statement may change several votes of a pair
            tables = {"INSERT": "NEW TABLE AS added_votes", "DELETE": "OLD TABLE AS removed_votes"}
            transition = tables.get(event, "OLD TABLE AS removed_votes NEW TABLE AS added_votes")
            each = f"REFERENCING {transition} FOR EACH STATEMENT"
        else:
            each = "FOR EACH ROW"
        op.execute(f"CREATE TRIGGER {name} {timing} {event} ON {table} {each}{when} EXECUTE FUNCTION {name}()")
    else:
        when = f" WHEN {condition}" if condition else ""
        body = "".join(f"{statement};\n" for statement in statements)
        op.execute(f"CREATE TRIGGER {name} {timing} {event} ON {table} FOR EACH ROW{when}\nBEGIN\n{body}END")


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    names = [(name, table) for name, table, *_ in _triggers(postgres)]
    names += [(f"review_counts_{table}_key", table) for table in KEY_CHANGES]
    for name, table in names:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgres else ""))
        if postgres:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    op.drop_table("review_counts")
