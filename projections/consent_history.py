"""Consent history: every consent given or withdrawn, per customer, in business time.

Answers a customer's consent history and the report's chart of consent given and withdrawn
over time per purpose and channel.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.domainmodel import customer_id
from projections.base import ReadModel, Rows, SlotTable, stream_column, text, time_column
from projections.fold import Stream

history = SlotTable(
    "consent_history",
    stream_column(),
    text("customer"),
    time_column("at"),
    sa.Column("seq", sa.Integer, nullable=False),
    text("purpose", 40),
    text("channel", 20),
    text("status", 10),
    text("method"),
    text("policy_version", nullable=True),
    text("fact_id"),
    text("month", 7),
    index=("stream_id",),
)


class ConsentHistory(ReadModel):
    name = "consent_history"
    tables = (history,)
    description = "every consent given or withdrawn, in business time"
    uses_timelines = True

    def rows(self, stream: Stream) -> Rows:
        # (stream, customer, at, seq, purpose, channel, status, method, policy, fact, month)
        return {history: stream.history}


def consent_history_of(conn: Connection, slot: str, ref: str) -> list[dict[str, Any]]:
    """A customer's consent facts in business order (ties: recording order)."""
    table = history[slot]
    query = (
        sa.select(table)
        .where(table.c.stream_id == customer_id(ref).hex)
        .order_by(table.c.at, table.c.seq)
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def consent_changes_by_month(conn: Connection, slot: str) -> list[tuple[str, str, str, str, int]]:
    """(month, purpose, channel, status, count) over every customer."""
    table = history[slot]
    query = (
        sa.select(table.c.month, table.c.purpose, table.c.channel, table.c.status, sa.func.count())
        .group_by(table.c.month, table.c.purpose, table.c.channel, table.c.status)
        .order_by(table.c.month)
    )
    return [(r[0], r[1], r[2], r[3], int(r[4])) for r in conn.execute(query)]
