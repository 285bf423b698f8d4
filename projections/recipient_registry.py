"""The recipient registry: every third party the ledger has seen receive personal data, with its
kind, how many disclosures and customers, when first and last, which categories, purposes and
bases. Kept as per-customer links (replaced with the customer's stream) and running totals
(adjusted by the difference a replaced stream makes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.domainmodel import Customer, DisclosureEvent
from projections.base import (
    Pass,
    ReadModel,
    Rows,
    SlotTable,
    Stream,
    Writer,
    stamp,
    stream_column,
    text,
    time_column,
)


def _figures() -> tuple[sa.Column[Any], ...]:
    return (
        text("recipient"),
        text("recipient_kind", 40),
        sa.Column("disclosures", sa.Integer, nullable=False),
        time_column("first_at"),
        time_column("last_at"),
        text("categories", 200),
        text("purposes", 200),
        text("bases", 200),
    )


links = SlotTable("recipient_links", stream_column(), *_figures(), index=("stream_id",))
recipients = SlotTable(
    "recipients", *_figures(), sa.Column("customers", sa.Integer, nullable=False)
)


@dataclass
class Figures:
    disclosures: int = 0
    customers: int = 0
    first_at: str = "9999"
    last_at: str = ""
    categories: set[str] = field(default_factory=set)
    purposes: set[str] = field(default_factory=set)
    bases: set[str] = field(default_factory=set)

    def add(self, row: Any, customers: int) -> None:
        """Add a link or totals row (recipient, kind, disclosures, first, last, sets...)."""
        self.disclosures += row[2]
        self.customers += customers
        self.first_at = min(self.first_at, row[3])
        self.last_at = max(self.last_at, row[4])
        for target, joined in zip(
            (self.categories, self.purposes, self.bases), row[5:8], strict=True
        ):
            target.update(v for v in joined.split(",") if v)

    def merge(self, other: Figures) -> None:
        self.disclosures += other.disclosures
        self.customers += other.customers
        self.first_at = min(self.first_at, other.first_at)
        self.last_at = max(self.last_at, other.last_at)
        self.categories |= other.categories
        self.purposes |= other.purposes
        self.bases |= other.bases

    def row(self, recipient: str, kind: str) -> tuple[Any, ...]:
        return (
            recipient,
            kind,
            self.disclosures,
            self.first_at,
            self.last_at,
            ",".join(sorted(self.categories)),
            ",".join(sorted(self.purposes)),
            ",".join(sorted(self.bases)),
            self.customers,
        )


class RecipientRegistry(ReadModel):
    name = "recipient_registry"
    tables = (links,)
    totals = (recipients,)
    description = "every recipient with its kind and counts"

    def __init__(self) -> None:
        self.delta: dict[tuple[str, str], Figures] = {}

    def begin(self, run: Pass) -> set[Any]:
        self.delta = {}
        return set()

    def rows(self, stream: Stream) -> Rows:
        return {links: [(stream.key, *f.row(*key)[:-1]) for key, f in self.links(stream).items()]}

    @staticmethod
    def links(stream: Stream) -> dict[tuple[str, str], Figures]:
        """The stream's disclosures per (recipient, kind)."""
        per: dict[tuple[str, str], Figures] = {}
        if not isinstance(stream.aggregate, Customer):
            return per
        for event in stream.events:
            if isinstance(event, DisclosureEvent):
                figures = per.get((event.recipient, event.recipient_kind))
                if figures is None:
                    figures = per[(event.recipient, event.recipient_kind)] = Figures(customers=1)
                at = stamp(event.at)
                figures.disclosures += 1
                figures.first_at = min(figures.first_at, at)
                figures.last_at = max(figures.last_at, at)
                figures.categories.update(event.categories)
                figures.purposes.add(event.purpose)
                figures.bases.add(event.basis)
        return per

    def replace(self, writer: Writer, streams: list[Stream], *, fresh: bool) -> None:
        if not fresh:
            for old in writer.select_streams(links, [s.key for s in streams]):
                figures = self.delta.setdefault((old.recipient, old.recipient_kind), Figures())
                figures.disclosures -= old.disclosures
                figures.customers -= 1
        produced = []
        for stream in streams:
            for key, figures in self.links(stream).items():
                produced.append((stream.key, *figures.row(*key)[:-1]))
                self.delta.setdefault(key, Figures()).merge(figures)
        if not fresh:
            writer.delete_streams(links, [s.key for s in streams])
        writer.insert(links, produced)

    def finish(self, writer: Writer) -> None:
        if not self.delta:
            return
        table = writer.table(recipients)
        merged: dict[tuple[str, str], Figures] = {}
        for row in writer.connection.execute(sa.select(table)):
            key = (row.recipient, row.recipient_kind)
            if key in self.delta:
                merged.setdefault(key, Figures()).add(tuple(row)[:8], row.customers)
        for key, change in self.delta.items():
            merged.setdefault(key, Figures()).merge(change)
        for recipient, kind in merged:
            writer.connection.execute(
                table.delete().where(
                    (table.c.recipient == recipient) & (table.c.recipient_kind == kind)
                )
            )
        writer.insert(recipients, [f.row(*key) for key, f in sorted(merged.items())])
        self.delta = {}


def registry(conn: Connection, slot: str) -> list[dict[str, Any]]:
    """Every recipient, by kind then name, with its counts."""
    table = recipients[slot]
    query = sa.select(table).order_by(table.c.recipient_kind, table.c.recipient)
    return [
        {
            "recipient": row.recipient,
            "recipient_kind": row.recipient_kind,
            "disclosures": row.disclosures,
            "customers": row.customers,
            "first_at": row.first_at,
            "last_at": row.last_at,
            "categories": row.categories.split(",") if row.categories else [],
            "purposes": row.purposes.split(",") if row.purposes else [],
            "bases": row.bases.split(",") if row.bases else [],
        }
        for row in conn.execute(query)
    ]
