"""A partial index of the fact index's due-diligence exports.

A customer's disclosure trail lists each data-room export that held their data (SPEC §5: an
export "is itself recorded as a disclosure to the acquirer"). `customer trail` reads every
export recorded (`fact_type = 'export.due_diligence'`): with no index on the type, that read
the whole fact index on every trail. This index holds only the exports (a handful in any
ledger), so an import pays only the test of each row's type, and the trail reads them at once.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

INDEX = "ix_ledger_facts_exports"
PREDICATE = "fact_type = 'export.due_diligence'"  # ledger.persistence.sqlite_reads.EXPORTS_ONLY


def upgrade() -> None:
    existing = sa.inspect(op.get_bind()).get_indexes("ledger_facts")
    if any(index["name"] == INDEX for index in existing):  # (a ledger set back to an
        return  # earlier revision by hand, as tests of the earlier migrations do)
    op.create_index(
        INDEX,
        "ledger_facts",
        ["notification_id"],
        sqlite_where=sa.text(PREDICATE),
        postgresql_where=sa.text(PREDICATE),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="ledger_facts")
