"""The ledger core: event store, fact ids, order and customer indexes, data keys, meta.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_events",
        sa.Column(
            "notification_id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("originator_id", sa.Uuid(), nullable=False),
        sa.Column("originator_version", sa.Integer, nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.UniqueConstraint("originator_id", "originator_version", name="uq_ledger_events_stream"),
    )
    op.create_table(
        "ledger_facts",
        sa.Column("fact_id", sa.String(500), primary_key=True),
        sa.Column("notification_id", sa.BigInteger, nullable=False),
        sa.Column("fact_type", sa.String(40), nullable=False),
        sa.Column("originator_id", sa.Uuid(), nullable=False),
    )
    op.create_index("ix_ledger_facts_notification_id", "ledger_facts", ["notification_id"])
    op.create_table(
        "ledger_orders",
        sa.Column("order_ref", sa.String(500), primary_key=True),
        sa.Column("customer_id", sa.Uuid(), nullable=False),
    )
    op.create_index("ix_ledger_orders_customer_id", "ledger_orders", ["customer_id"])
    op.create_table(
        "ledger_customers",
        sa.Column("customer_id", sa.Uuid(), primary_key=True),
        sa.Column("customer_ref", sa.String(500), nullable=False, unique=True),
        sa.Column("notification_id", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "ledger_data_keys",
        sa.Column("customer_id", sa.Uuid(), primary_key=True),
        sa.Column("wrapped_key", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "ledger_meta",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "ledger_meta",
        "ledger_data_keys",
        "ledger_customers",
        "ledger_orders",
        "ledger_facts",
        "ledger_events",
    ):
        op.drop_table(table)
