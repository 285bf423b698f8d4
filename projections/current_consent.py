"""Current consent: each customer's status per purpose and channel now, and since when."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.domainmodel import customer_id
from ledger.vocabulary import PURPOSE_CHANNELS
from projections.base import ReadModel, Rows, SlotTable, stamp_to_iso, stream_column, text
from projections.fold import Stream

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
        """`ledger.views.consent_rows` over the stream's consent facts: per purpose and
        channel (in the vocabulary's order), the status of the latest fact in business time
        and since when it has held (a consent given twice is given since the first)."""
        if stream.customer is None:
            return {}
        key, ref = stream.key, stream.ref
        found = []
        for (purpose, channel), entries in sorted(
            stream.consents.items(), key=lambda kv: _PURPOSE_CHANNEL_ORDER[kv[0]]
        ):
            ordered = sorted(entries)  # (at, version, given): business time, then recording
            given = ordered[-1][2]
            since = ordered[-1][0]
            for at, _version, status in reversed(ordered):
                if status != given:
                    break
                since = at
            status_text = "given" if given else "withdrawn"
            found.append((key, ref, purpose, channel, status_text, stamp_to_iso(since)))
        return {current: found}


_PURPOSE_CHANNEL_ORDER = {
    (purpose, channel): index
    for index, (purpose, channel) in enumerate(
        (p, c) for p, channels in PURPOSE_CHANNELS.items() for c in sorted(channels)
    )
}


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
