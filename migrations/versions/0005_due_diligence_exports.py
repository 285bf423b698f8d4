"""due-diligence exports: export secrets and manifests.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_export_secrets",
        sa.Column("export_id", sa.Uuid(), primary_key=True),
        sa.Column("acquirer", sa.String(500), nullable=False),
        sa.Column("wrapped_secret", sa.LargeBinary, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("identified", sa.Boolean, nullable=False),
        sa.Column("customers", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_export_secrets")
