"""order_status read model: an order's status in business time.

An order's status was the last dispatch, delivery or cancellation *recorded*: a dispatch
reported late, dated before the delivery already recorded, made a delivered order read
"dispatched". It is now the latest in business time (ties by recording order), as SPEC §1
asks every question. The model is emptied and set back to event zero, so the next query that
reads it rebuilds it from the events (read models are disposable: see 0002). No event
changes: the status was always derived.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

from migrations import reset_read_model

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    reset_read_model(op.get_bind(), "order_status", ("order_status",))


def downgrade() -> None:
    reset_read_model(op.get_bind(), "order_status", ("order_status",))
