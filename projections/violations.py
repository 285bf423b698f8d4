"""Rule violations (SPEC §3), judged in business time against everything recorded.

When any event of a customer arrives, late ones included, the customer is judged again from
their whole stream by `ledger.rules.audit_customer`, the one implementation of the rules. A
`transfer.initiated` judges again the customers who disclosed to that acquirer with a
`transfer_without_initiation` (`Violations.begin`). The model
keeps, beside the violations, the acquirers each customer disclosed to and the initiations
of each acquirer (business time and position in the log: a disclosure and an initiation at
the same `at` are ordered by recording order), which is all a judgement needs from outside the
customer's stream.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger.rules import Initiations, Judged, Violation, broken_rules
from projections.base import (
    Pass,
    ReadModel,
    Rows,
    SlotTable,
    stamp,
    stream_column,
    text,
    time_column,
    unstamp,
)
from projections.fold import Stream, fast_stamp

violations = SlotTable(
    "violations",
    stream_column(),
    text("customer"),
    text("rule", 60),
    text("fact_id"),
    time_column("at"),
    index=("stream_id", "at"),
)
transfers = SlotTable(
    "violation_transfers", stream_column(), text("acquirer"), index=("stream_id", "acquirer")
)
transfer_initiations = SlotTable(
    "transfer_initiations",
    stream_column(),
    text("acquirer"),
    time_column("at"),
    sa.Column("position", sa.BigInteger, nullable=False),  # in the event log
    index=("stream_id",),
)
# Customers with an erasure or rectification that calls for notifying recipients (Art. 19):
# whether one is late depends on the time of the question, so it is judged when asked.
notices = SlotTable("violation_notices", stream_column(), index=("stream_id",))
_UNINITIATED = "transfer_without_initiation"  # the one rule an acquirer's initiations decide


class Violations(ReadModel):
    name = "violations"
    tables = (violations, transfers, transfer_initiations, notices)
    description = "every fact that broke a rule (SPEC §3)"
    uses_stamps = False

    def __init__(self) -> None:
        self.initiated = Initiations()

    def begin(self, run: Pass) -> set[UUID]:
        known: dict[str, list[tuple[datetime, int]]] = {}
        conn = run.writer.connection
        if not run.fresh:
            table = run.writer.table(transfer_initiations)
            query = sa.select(table.c.acquirer, table.c.at, table.c.position)
            for row in conn.execute(query):
                known.setdefault(row.acquirer, []).append((unstamp(row.at), row.position))
        named = [(s.acquirer, s.initiations) for s in run.acquirers if s.acquirer is not None]
        # The customers who disclosed to an acquirer are judged again when its initiations
        # changed, not for its other events (a due-diligence export). Initiations are only
        # ever added (events are forever), and one more can only clear a disclosure's
        # `transfer_without_initiation` (it is "no earlier initiation"), never make one: so
        # only the customers with such a violation are judged again, unless the model's
        # initiations are not a part of the acquirer's (then every customer of it is).
        names: list[str] = []
        added_only = True
        for name, initiations in named:
            before = known.get(name, [])
            if sorted(before) != sorted(initiations):
                names.append(name)
                added_only = added_only and set(before) <= set(initiations)
        known.update(named)  # the acquirers whose streams were read: all of their initiations
        self.initiated = Initiations(known.items(), stream_ordered_until=run.stream_ordered_until)
        if run.fresh or not names:
            return set()
        table = run.writer.table(transfers)
        query = sa.select(table.c.stream_id).where(table.c.acquirer.in_(names)).distinct()
        if added_only:
            broken = run.writer.table(violations)
            query = query.where(
                table.c.stream_id.in_(
                    sa.select(broken.c.stream_id).where(broken.c.rule == _UNINITIATED)
                )
            )
        return {UUID(hex=row.stream_id) for row in conn.execute(query)}

    def rows(self, stream: Stream) -> Rows:
        key = stream.key
        if stream.acquirer is not None:
            name = stream.acquirer
            return {
                transfer_initiations: [
                    (key, name, stamp(at), position) for at, position in stream.initiations
                ]
            }
        customer = stream.customer
        if customer is None:
            return {}
        # `ledger.rules.audit_customer` over the stream's contacts and disclosures.
        ref = customer.ref
        initiated = self.initiated
        found = [
            (key, ref, rule, fact_id, fast_stamp(stored_at))
            for fact_type, fact_id, at, version, data, stored_at, position in stream.judged
            for rule in broken_rules(
                customer, Judged(fact_type, fact_id, at, version, data, position), initiated
            )
        ]
        return {
            violations: found,
            transfers: [(key, name) for name in sorted(stream.acquirers)],
            notices: [(key,)] if stream.notices else [],
        }


def audit_order(found: list[Violation]) -> list[Violation]:
    """The order `audit check` lists violations in: business time, customer, fact, rule."""
    return sorted(found, key=lambda v: (v.at, v.customer, v.fact_id, v.rule))


def violations_as_of(conn: Connection, slot: str, as_of: datetime | None) -> list[Violation]:
    """Violations among facts at or before `as_of` (all if None)."""
    table = violations[slot]
    query = sa.select(table.c.rule, table.c.customer, table.c.fact_id, table.c.at)
    if as_of is not None:
        query = query.where(table.c.at <= stamp(as_of))
    return audit_order(
        [Violation(r.rule, r.customer, r.fact_id, unstamp(r.at)) for r in conn.execute(query)]
    )


def notice_streams(conn: Connection, slot: str) -> list[UUID]:
    table = notices[slot]
    return [UUID(hex=row.stream_id) for row in conn.execute(sa.select(table.c.stream_id))]
