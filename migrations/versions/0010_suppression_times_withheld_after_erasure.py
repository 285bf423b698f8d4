"""ledger_suppressions: an erased customer's suppression no longer says since when.

A marketing suppression (Art. 21) outlives its owner's erasure, keyed by a hash of the email
with no customer id. But its time was the withdrawal's, exact, which stays in the erased
customer's consent history: `suppression check` of a guessed email, answering that time,
tied the email back to the erased customer. `since` may now be NULL ("withheld"), and an
erasure withholds it for each of the customer's emails (`KeyStore.withhold_suppression_times`).

For erasures recorded before this revision the emails cannot be known (the keys are gone):
a suppression whose channel and time are those of a marketing withdrawal by an erased
customer is withheld. One of another customer at that very time and channel is withheld too
(it stays suppressed; only its time is no longer shown).

Downgrading gives a withheld time the epoch (1970-01-01), as the old schema needs one.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_SUPPRESSIONS = sa.table(
    "ledger_suppressions",
    sa.column("email_hash", sa.String(64)),
    sa.column("channel", sa.String(20)),
    sa.column("since", sa.DateTime(timezone=True)),
)

_ERASED_WITHDRAWALS = sa.text(
    "SELECT e.state FROM ledger_facts f "
    "JOIN ledger_events e ON e.notification_id = f.notification_id "
    "WHERE f.fact_type = 'consent.withdrawn' AND f.originator_id IN "
    "(SELECT originator_id FROM ledger_facts WHERE fact_type = 'subject.erased')"
)


def _erased_withdrawals(bind: Connection) -> set[tuple[str, datetime]]:
    """(channel, time) of every marketing withdrawal by a customer erased since."""
    from ledger.persistence.stored_state import decode_state

    found: set[tuple[str, datetime]] = set()
    for (state,) in bind.execute(_ERASED_WITHDRAWALS):
        fact = decode_state(state)
        if fact.get("purpose") == "marketing":
            found.add((str(fact["channel"]), _aware(fact["at"])))
    return found


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("ledger_suppressions") as batch:
        batch.alter_column("since", existing_type=sa.DateTime(timezone=True), nullable=True)
    erased = _erased_withdrawals(bind)
    if not erased:
        return
    rows = bind.execute(sa.select(_SUPPRESSIONS)).all()
    withheld = [
        {"h": row.email_hash, "c": row.channel}
        for row in rows
        if row.since is not None and (row.channel, _aware(row.since)) in erased
    ]
    if withheld:
        bind.execute(
            _SUPPRESSIONS.update()
            .where(
                _SUPPRESSIONS.c.email_hash == sa.bindparam("h"),
                _SUPPRESSIONS.c.channel == sa.bindparam("c"),
            )
            .values(since=None),
            withheld,
        )


def downgrade() -> None:
    bind = op.get_bind()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    bind.execute(_SUPPRESSIONS.update().where(_SUPPRESSIONS.c.since.is_(None)).values(since=epoch))
    with op.batch_alter_table("ledger_suppressions") as batch:
        batch.alter_column("since", existing_type=sa.DateTime(timezone=True), nullable=False)
