"""personal data: the Art. 21 suppression list.

Keys (the suppression list's HMAC key, wrapped by the master key) live in `ledger_meta`;
Art. 19 notifications are derived from the events, so they need no table of their own.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_suppressions",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("channel", sa.String(20), primary_key=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_suppressions")
