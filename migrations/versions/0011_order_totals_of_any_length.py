"""order_status read model: a total and a currency as text of any length.

The feed's validation now bounds a total to 40 characters and a currency to three capital
letters, but a version before this one recorded any decimal string as a total and let a
currency end in a newline ("GBP\\n"). Events are forever: on PostgreSQL, which enforces a
VARCHAR's length, one such event made every catch-up of the order-status model fail, and so
`projections rebuild`, `audit report` and `report processing`, for good. The columns become
TEXT there (SQLite does not enforce the lengths; its tables are left as they are).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations import reset_read_model

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = (("total", 40), ("currency", 3))


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for slot in ("a", "b"):
        for column, length in _COLUMNS:
            op.alter_column(
                f"rm_order_status_{slot}",
                column,
                type_=sa.Text(),
                existing_type=sa.String(length),
                existing_nullable=False,
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    reset_read_model(op.get_bind(), "order_status", ("order_status",))  # (rows may not fit)
    for slot in ("a", "b"):
        for column, length in _COLUMNS:
            op.alter_column(
                f"rm_order_status_{slot}",
                column,
                type_=sa.String(length),
                existing_type=sa.Text(),
                existing_nullable=False,
            )
