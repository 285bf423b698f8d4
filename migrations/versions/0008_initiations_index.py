"""A partial index of the fact index's transfer initiations.

Every command that discloses is judged first (SPEC §3's preventive side), and the rule
`transfer_without_initiation` reads every acquirer's initiations: `SELECT DISTINCT
originator_id FROM ledger_facts WHERE fact_type = 'transfer.initiated'`. With no index on
the type, that read the whole fact index, under the writer's lock, on every such command:
27 ms at 200k facts on PostgreSQL, growing with the ledger. This index holds only the
initiations (a handful in any ledger), so it costs an import nothing but the test of each
row's type, and answers that read at once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

INDEX = "ix_ledger_facts_initiations"
PREDICATE = "fact_type = 'transfer.initiated'"  # ledger.persistence.sqlite_reads.INITIATIONS_ONLY


def upgrade() -> None:
    existing = sa.inspect(op.get_bind()).get_indexes("ledger_facts")
    if any(index["name"] == INDEX for index in existing):  # a schema made from the models
        return
    op.create_index(
        INDEX,
        "ledger_facts",
        ["originator_id", "notification_id"],
        sqlite_where=sa.text(PREDICATE),
        postgresql_where=sa.text(PREDICATE),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="ledger_facts")
