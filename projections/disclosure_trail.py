"""Disclosure trail: every disclosure of a customer's data (recipient, kind, purpose, basis,
categories, order), in business time. Answers "who has my data, since when, why"."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.domainmodel import customer_id
from projections.base import (
    ReadModel,
    Rows,
    SlotTable,
    stamp_to_iso,
    stream_column,
    text,
    time_column,
)
from projections.fold import Stream

trail = SlotTable(
    "disclosure_trail",
    stream_column(),
    text("customer"),
    time_column("at"),
    sa.Column("seq", sa.Integer, nullable=False),
    text("recipient"),
    text("recipient_kind", 40),
    text("purpose", 40),
    text("basis", 40),
    text("categories", 200),
    text("order_ref", nullable=True),
    text("fact_id"),
    text("month", 7),
    index=("stream_id",),
)


class DisclosureTrail(ReadModel):
    name = "disclosure_trail"
    tables = (trail,)
    description = "every disclosure of personal data, in business time"
    uses_timelines = True

    def rows(self, stream: Stream) -> Rows:
        # (stream, customer, at, seq, recipient, kind, purpose, basis, categories (sorted,
        # comma-joined), order, fact, month)
        return {trail: stream.trail}


def trail_of(conn: Connection, slot: str, ref: str) -> list[dict[str, Any]]:
    """SPEC `customer trail` rows, ordered by `at` (ties: recording order)."""
    table = trail[slot]
    query = (
        sa.select(table)
        .where(table.c.stream_id == customer_id(ref).hex)
        .order_by(table.c.at, table.c.seq)
    )
    return [
        {
            "at": stamp_to_iso(row.at),
            "recipient": row.recipient,
            "recipient_kind": row.recipient_kind,
            "purpose": row.purpose,
            "basis": row.basis,
            "categories": row.categories.split(",") if row.categories else [],
            "order": row.order_ref,
            "fact_id": row.fact_id,
        }
        for row in conn.execute(query)
    ]


def disclosures_by_month(conn: Connection, slot: str) -> list[tuple[str, str, int]]:
    """(month, recipient kind, disclosures)."""
    table = trail[slot]
    query = (
        sa.select(table.c.month, table.c.recipient_kind, sa.func.count())
        .group_by(table.c.month, table.c.recipient_kind)
        .order_by(table.c.month)
    )
    return [(r[0], r[1], int(r[2])) for r in conn.execute(query)]


def purposes_of_disclosure(conn: Connection, slot: str) -> list[dict[str, Any]]:
    """Per (purpose, basis, recipient kind): disclosures, customers and the categories sent."""
    table = trail[slot]
    query = sa.select(
        table.c.purpose,
        table.c.basis,
        table.c.recipient_kind,
        table.c.categories,
        sa.func.count(),
    ).group_by(table.c.purpose, table.c.basis, table.c.recipient_kind, table.c.categories)
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for purpose, basis, kind, categories, count in conn.execute(query):
        entry = merged.setdefault(
            (purpose, basis, kind),
            {
                "purpose": purpose,
                "basis": basis,
                "recipient_kind": kind,
                "disclosures": 0,
                "categories": set(),
            },
        )
        entry["disclosures"] += int(count)
        entry["categories"].update(c for c in categories.split(",") if c)
    for entry in merged.values():
        entry["categories"] = sorted(entry["categories"])
    return sorted(merged.values(), key=lambda e: (e["purpose"], e["recipient_kind"]))
