"""integrity: Merkle leaves, signed checkpoints, append-only triggers.

`ledger_tree_nodes` holds the leaf hashes of the RFC 9162 tree over the events and its
complete subtree hashes from level 4 up (see `ledger.persistence.seals`);
`ledger_checkpoints` the signed (tree size, root) of every write.
Triggers make the database itself refuse UPDATE and DELETE (and, on PostgreSQL, TRUNCATE) on
the events, the seals and the append-only indexes. `ledger_data_keys` is left updatable on
purpose: destroying a customer's key (erasure) is an update, and it is outside the tree.

Events recorded before this revision are sealed by `db upgrade` right after it runs (it has
the signing key; a migration does not).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

APPEND_ONLY = (
    "ledger_events",
    "ledger_tree_nodes",
    "ledger_checkpoints",
    "ledger_facts",
    "ledger_orders",
    "ledger_customers",
)


def _message(table: str, operation: str) -> str:
    return (
        f"{table} is append-only: {operation} is refused "
        "(consent-ledger keeps recorded history unaltered)"
    )


def upgrade() -> None:
    op.create_table(
        "ledger_tree_nodes",
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "ledger_checkpoints",
        sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary, nullable=False),
        sa.Column("signed_at", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":
        for table in APPEND_ONLY:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_refuse_{operation.lower()} "
                    f"BEFORE {operation} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{_message(table, operation)}'); END"
                )
        return
    op.execute(
        """
        CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % is refused '
                '(consent-ledger keeps recorded history unaltered)', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'restrict_violation';
        END
        $$
        """
    )
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_refuse_change BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_refuse_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table in APPEND_ONLY:
            for operation in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_{operation}")
    else:
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_change ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_refuse_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS ledger_refuse_change()")
    op.drop_table("ledger_checkpoints")
    op.drop_table("ledger_tree_nodes")
