"""A partial index of the fact index's transfer disclosures and rectifications.

Once an identified export has been made as of a time, every `recipients notifications` and
`audit check` reads the customers it may have given details a rectification changed
(`export_store.rectified_after_disclosing`): every `transfer.disclosure` (the export's own
among them) and every `customer.updated` recorded, from event 0. With no index on the type,
that read the whole fact index: about 1.0 s of each command at 1M facts on SQLite. This index
holds only those two types (a few percent of a feed's facts, and each identified export's own
disclosures), ordered by position as the read is.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

INDEX = "ix_ledger_facts_disclosures_rectifications"
# ledger.persistence.tables.DISCLOSURES_AND_RECTIFICATIONS_ONLY
PREDICATE = "fact_type IN ('transfer.disclosure', 'customer.updated')"


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
