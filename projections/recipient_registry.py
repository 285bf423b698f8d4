"""The recipient registry: every third party the ledger has seen receive personal data, with its
kind, how many disclosures and customers, when first and last, which categories, purposes and
bases. Kept as per-customer links (replaced with the customer's stream) and running totals
(adjusted by the difference a replaced stream makes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.free_text import WITHHELD, shaped_like_personal_data
from ledger.iterables import batched
from ledger.persistence import tables as ledger_tables
from projections import fold
from projections.base import (
    Pass,
    ReadModel,
    Rows,
    SlotTable,
    Writer,
    stamp_to_iso,
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
        key = stream.key
        return {links: [_link_row(key, pair, link) for pair, link in stream.links.items()]}

    def replace(self, writer: Writer, streams: list[Stream], *, fresh: bool) -> None:
        delta = self.delta
        if not fresh:
            for old in writer.select_streams(links, [s.key for s in streams]):
                figures = delta.setdefault((old.recipient, old.recipient_kind), Figures())
                figures.disclosures -= old.disclosures
                figures.customers -= 1
        produced = []
        for stream in streams:
            key = stream.key
            for pair, link in stream.links.items():
                produced.append(_link_row(key, pair, link))
                change = delta.get(pair)
                if change is None:
                    delta[pair] = change = Figures(first_at=link.first_at, last_at=link.last_at)
                elif link.first_at < change.first_at:
                    change.first_at = link.first_at
                if link.last_at > change.last_at:
                    change.last_at = link.last_at
                change.disclosures += link.disclosures
                change.customers += 1
                change.categories |= link.categories
                change.purposes |= link.purposes
                change.bases |= link.bases
        if not fresh:
            writer.delete_streams(links, [s.key for s in streams])
        writer.insert(links, produced)

    def handover(self) -> dict[tuple[str, str], Figures]:
        return self.delta

    def take_over(self, accumulated: dict[tuple[str, str], Figures]) -> None:
        for key, change in accumulated.items():
            self.delta.setdefault(key, Figures()).merge(change)

    def finish(self, writer: Writer) -> None:
        if not self.delta:
            return
        table = writer.table(recipients)
        merged: dict[tuple[str, str], Figures] = {}
        for row in writer.select_all(recipients):
            key = (row.recipient, row.recipient_kind)
            if key in self.delta:
                merged.setdefault(key, Figures()).add(tuple(row)[:8], row.customers)
        for key, change in self.delta.items():
            merged.setdefault(key, Figures()).merge(change)
        for recipient, kind in merged:
            writer.delete_where(
                recipients, (table.c.recipient == recipient) & (table.c.recipient_kind == kind)
            )
        writer.insert(recipients, [f.row(*key) for key, f in sorted(merged.items())])
        self.delta = {}


def registry(conn: Connection, slot: str, kind: str | None = None) -> list[dict[str, Any]]:
    """Every recipient (of `kind`, if given), by kind then name, with its counts; times in
    the ledger's printed form (`ledger.feed.iso`). A name shaped like an email or phone
    number whose customers are all erased is withheld (`free_text.WITHHELD`), as their
    trails withhold it: it may be one of theirs, put in the wrong field."""
    table = recipients[slot]
    query = sa.select(table).order_by(table.c.recipient_kind, table.c.recipient)
    if kind is not None:
        query = query.where(table.c.recipient_kind == kind)
    return [
        {
            "recipient": _shown(conn, slot, row.recipient, row.recipient_kind),
            "recipient_kind": row.recipient_kind,
            "disclosures": row.disclosures,
            "customers": row.customers,
            "first_at": stamp_to_iso(row.first_at),
            "last_at": stamp_to_iso(row.last_at),
            "categories": row.categories.split(",") if row.categories else [],
            "purposes": row.purposes.split(",") if row.purposes else [],
            "bases": row.bases.split(",") if row.bases else [],
        }
        for row in conn.execute(query)
    ]


def _shown(conn: Connection, slot: str, recipient: str, kind: str) -> str:
    """`recipient`, or `WITHHELD` if it is shaped like personal data and every customer
    who disclosed to it is erased."""
    if not shaped_like_personal_data(recipient):
        return recipient
    table = links[slot]
    streams = sa.select(table.c.stream_id).where(
        (table.c.recipient == recipient) & (table.c.recipient_kind == kind)
    )
    facts = ledger_tables.facts
    for chunk in batched(conn.execute(streams).scalars(), 500):
        ids = [UUID(hex=stream) for stream in chunk]
        erased = conn.execute(
            sa.select(sa.func.count(sa.distinct(facts.c.originator_id))).where(
                (facts.c.fact_type == "subject.erased") & facts.c.originator_id.in_(ids)
            )
        ).scalar_one()
        if erased < len(set(ids)):
            return recipient  # a customer not erased disclosed to it
    return WITHHELD


def _join(values: set[str]) -> str:
    if len(values) == 1:  # the usual case (one purpose, one basis): no list to sort
        for value in values:
            return value
    return ",".join(sorted(values))


def _link_row(key: Any, pair: tuple[str, str], link: fold.Figures) -> tuple[Any, ...]:
    """A customer's row of `rm_recipient_links`: the recipient and kind, and the link's
    count, first and last times, categories, purposes and bases."""
    return (
        key,
        *pair,
        link.disclosures,
        link.first_at,
        link.last_at,
        _join(link.categories),
        _join(link.purposes),
        _join(link.bases),
    )
