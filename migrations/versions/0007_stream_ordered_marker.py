"""`stream_ordered_until` for every ledger, also one that 0006 upgraded before it kept it.

Until 0006 an import stored a chunk's events stream by stream, so their positions did not
follow its lines, and a tie at the same `at` between two facts recorded by then is judged as
it was then (`ledger.rules.Initiations.stream_ordered_until`). 0006 as first released
(fb271b1 to 448b0b8) did not yet keep that position: a ledger those versions upgraded from
0005 has no marker, and its old ties were judged by positions that do not order its lines,
giving false `transfer_without_initiation` violations.

The position was not stored, but it shows in the events. An event's timestamp is taken as
its fact is applied, in the order of the file's lines; a chunk stored stream by stream put
events after others with later timestamps, which an import since 0006 (in line order) and a
command never do. So the marker is the last position whose timestamp is earlier than one
before it: every pair of events whose positions do not follow the order they were applied
in ends at or before it. A ledger with no such position gets 0, so that from this revision
on every ledger keeps the marker and its absence means nothing. (A system clock set back
while the ledger recorded would also show as such a position; the ties before it would then
be judged as before 0006, the initiation counting.)

A ledger whose marker 0006 kept is left as it is. The violations model is emptied and set
back to event zero, as in 0006, so the next query rebuilds it with this version's verdicts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

from migrations import reset_violations_model

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_MARKER = "stream_ordered_until"


def _last_out_of_order(bind: Connection) -> int:
    """The last position whose event's timestamp is earlier than an event's before it."""
    from ledger.persistence.stored_state import decode_state

    rows = bind.execute(
        sa.text("SELECT notification_id, state FROM ledger_events ORDER BY notification_id"),
        execution_options={"stream_results": True, "yield_per": 10_000},
    )
    latest: datetime | None = None
    last = 0
    for position, state in rows:
        stamp = decode_state(state)["timestamp"]
        if latest is not None and stamp < latest:
            last = int(position)
        else:
            latest = stamp
    return last


def upgrade() -> None:
    bind = op.get_bind()
    # The violations model is rebuilt by the next query that reads it, in any case: its
    # verdicts may differ from this version's (the marker set here; since this version, an
    # erasure calls for notices to every recipient of the data, also after it).
    reset_violations_model(bind)
    kept = bind.execute(
        sa.text("SELECT value FROM ledger_meta WHERE name = :name"), {"name": _MARKER}
    ).scalar()
    if kept is not None:
        return
    bind.execute(
        sa.text("INSERT INTO ledger_meta (name, value) VALUES (:name, :value)"),
        {"name": _MARKER, "value": str(_last_out_of_order(bind))},
    )


def downgrade() -> None:
    """Nothing to undo: the marker means the same at 0006."""
