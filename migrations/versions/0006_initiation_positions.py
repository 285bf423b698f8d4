"""violations read model: transfer initiations keep their position in the event log.

SPEC §1 breaks ties at the same `at` by recording order. A transfer disclosure and its
acquirer's initiation are in two streams, so their recording order is their position in the
event log, which the model's `transfer_initiations` did not keep: a disclosure was judged
initiated by an initiation at the same `at` recorded after it. The column is added and the
model emptied and set back to event zero, so the next query that reads it rebuilds it from
the events (read models are disposable: see 0002).

Until this revision an import stored a chunk's events stream by stream, so positions within
one import did not follow its lines: the log's end now is kept as `stream_ordered_until` in
`ledger_meta`, and a tie between two facts both recorded by then is judged as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from migrations import reset_violations_model

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SLOTS = ("a", "b")


def _reset() -> None:
    """Empty the violations model in both slots and set it back to event zero."""
    reset_violations_model(op.get_bind())


def _columns(table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    _reset()
    # Up to the log's end now, an import stored a chunk's events stream by stream: their
    # positions do not order an import's lines, and a tie between facts recorded by then is
    # judged as before (`ledger.rules.Initiations.stream_ordered_until`).
    bind = op.get_bind()
    if "ledger_meta" in set(sa.inspect(bind).get_table_names()):
        head = bind.execute(sa.text("SELECT max(notification_id) FROM ledger_events")).scalar()
        if head:
            bind.execute(
                sa.text("INSERT INTO ledger_meta (name, value) VALUES (:name, :value)"),
                {"name": "stream_ordered_until", "value": str(int(head))},
            )
    for slot in _SLOTS:
        table = f"rm_transfer_initiations_{slot}"
        if "position" not in _columns(table):  # 0002 made it from today's definition
            op.add_column(
                table, sa.Column("position", sa.BigInteger, nullable=False, server_default="0")
            )


def downgrade() -> None:
    _reset()
    op.execute(sa.text("DELETE FROM ledger_meta WHERE name = 'stream_ordered_until'"))
    for slot in _SLOTS:
        with op.batch_alter_table(f"rm_transfer_initiations_{slot}") as batch:
            batch.drop_column("position")
