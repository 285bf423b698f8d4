"""read models (projections): tables and tracking.

Read models are disposable (they are rebuilt from the events), so their tables are created
from the definitions in `projections/` as of this revision: a later change to a read model's
tables comes with a revision that drops and recreates them, and a rebuild fills them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _read_model_tables() -> list[sa.Table]:
    from projections.base import metadata
    from projections.runner import NAMES  # registers every model's tables

    assert NAMES
    return list(metadata.sorted_tables)


def upgrade() -> None:
    from projections.base import tracking
    from projections.runner import NAMES

    bind = op.get_bind()
    for table in _read_model_tables():
        table.create(bind, checkfirst=True)
    present = {row[0] for row in bind.execute(sa.select(tracking.c.name))}
    rows = [{"name": name, "position": 0, "slot": "a"} for name in NAMES if name not in present]
    if rows:
        bind.execute(tracking.insert(), rows)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(_read_model_tables()):
        table.drop(bind, checkfirst=True)
