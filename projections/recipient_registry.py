"""The recipient registry: every third party the ledger has seen receive personal data, with its
kind, how many disclosures and customers, when first and last, which categories, purposes and
bases. Kept as per-customer links (replaced with the customer's stream) and running totals
(adjusted by the difference a replaced stream makes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from projections.base import (
    Pass,
    ReadModel,
    Rows,
    SlotTable,
    Writer,
    stream_column,
    text,
    time_column,
)
from projections.fold import Stream


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
    uses_links = True

    def __init__(self) -> None:
        self.delta: dict[tuple[str, str], Figures] = {}

    def begin(self, run: Pass) -> set[Any]:
        self.delta = {}
        return set()

    def rows(self, stream: Stream) -> Rows:
        return {links: [row for row, _figures in self.links(stream)]}

    @staticmethod
    def links(stream: Stream) -> list[tuple[tuple[Any, ...], Figures]]:
        """The stream's link rows (one per recipient and kind), each with its figures."""
        found = []
        for (recipient, kind), link in stream.links.items():
            figures = Figures(
                link.disclosures,
                1,
                link.first_at,
                link.last_at,
                link.categories,
                link.purposes,
                link.bases,
            )
            found.append((figures.row(recipient, kind)[:-1], figures))
        return found

    def replace(self, writer: Writer, streams: list[Stream], *, fresh: bool) -> None:
        if not fresh:
            for old in writer.select_streams(links, [s.key for s in streams]):
                figures = self.delta.setdefault((old.recipient, old.recipient_kind), Figures())
                figures.disclosures -= old.disclosures
                figures.customers -= 1
        produced = []
        delta = self.delta
        for stream in streams:
            for row, figures in self.links(stream):
                produced.append((stream.key, *row))
                change = delta.get((row[0], row[1]))
                if change is None:
                    # The stream's own sets are not shared with anything: take a copy.
                    delta[(row[0], row[1])] = Figures(
                        figures.disclosures,
                        figures.customers,
                        figures.first_at,
                        figures.last_at,
                        set(figures.categories),
                        set(figures.purposes),
                        set(figures.bases),
                    )
                else:
                    change.merge(figures)
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
