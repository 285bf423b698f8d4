"""Current consent: each customer's status per purpose and channel now, and since when."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.domainmodel import Customer, customer_id
from ledger.views import consent_rows
from projections.base import ReadModel, Rows, SlotTable, Stream, stream_column, text

current = SlotTable(
    "current_consent",
    stream_column(),
    text("customer"),
    text("purpose", 40),
    text("channel", 20),
    text("status", 10),
    text("since", 40),
    index=("stream_id",),
)


class CurrentConsent(ReadModel):
    name = "current_consent"
    tables = (current,)
    description = "each customer's consent per purpose and channel now"

    def rows(self, stream: Stream) -> Rows:
        customer = stream.aggregate
        if not isinstance(customer, Customer):
            return {}
        consents = [e for e in stream.events if isinstance(e, _CONSENT_EVENTS)]
        return {
            current: [
                (stream.key, customer.ref, r["purpose"], r["channel"], r["status"], r["since"])
                for r in consent_rows(consents)
            ]
        }


# `consent_rows` reads only these: giving it only these spares sorting the other facts.
_CONSENT_EVENTS = (Customer.ConsentGiven, Customer.ConsentWithdrawn)


def current_consents_of(conn: Connection, slot: str, ref: str) -> list[dict[str, Any]]:
    table = current[slot]
    query = sa.select(table.c.purpose, table.c.channel, table.c.status, table.c.since).where(
        table.c.stream_id == customer_id(ref).hex
    )
    return [dict(row._mapping) for row in conn.execute(query)]


def consent_totals(conn: Connection, slot: str) -> list[tuple[str, str, str, int]]:
    """(purpose, channel, status, customers) now."""
    table = current[slot]
    query = (
        sa.select(table.c.purpose, table.c.channel, table.c.status, sa.func.count())
        .group_by(table.c.purpose, table.c.channel, table.c.status)
        .order_by(table.c.purpose, table.c.channel, table.c.status)
    )
    return [(r[0], r[1], r[2], int(r[3])) for r in conn.execute(query)]
