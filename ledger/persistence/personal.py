"""Index queries for the personal-data features (Art. 19 and 21), kept out of the domain.

The keys, the suppression list and rotation are `keys.py`'s; these only find events and
facts: a customer's details events (to know their email at a time) and the customers whose
erasure or rectification may call for notifications.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger.iterables import batched
from ledger.persistence.database import Database

_DETAILS_TOPICS = tuple(
    f"ledger.domainmodel:Customer.{name}" for name in ("Registered", "DetailsUpdated")
)
# On the driver (`?` marks): a write of one fact reads these without SQLAlchemy.
_SELECT_DETAILS = (
    "SELECT originator_version, topic, state FROM ledger_events "
    f"WHERE originator_id = ? AND topic IN ({', '.join('?' for _ in _DETAILS_TOPICS)}) "
    "ORDER BY originator_version"
)


def details_events(database: Database, customer_id: UUID) -> list[StoredEvent]:
    """The customer's saved registration and details updates (in the ambient write, if any)."""
    ident = customer_id.hex if database.is_sqlite else customer_id
    rows = database.fetch_on_driver(_SELECT_DETAILS, (ident, *_DETAILS_TOPICS))
    return [
        StoredEvent(customer_id, version, topic, _bytes(state)) for version, topic, state in rows
    ]


def _bytes(state: Any) -> Any:
    """A stored event's state as SQLAlchemy gave it: PostgreSQL's bytea may come back as a
    memoryview."""
    return bytes(state) if isinstance(state, memoryview) else state


def streams_with_facts(
    database: Database, fact_types: Iterable[str], among: Collection[UUID] | None = None
) -> Iterator[tuple[UUID, list[StoredEvent]]]:
    """The whole stream of every customer with any fact of these types, in one streamed
    query (ordered by customer, then version): no query per customer. Given `among`
    (customer streams), those streams instead, whatever their facts (the fact index has no
    index by stream to tell): a query per 500, ordered alike."""
    import sqlalchemy as sa

    from ledger.persistence import tables

    _E = tables.events
    having = (
        sa.select(tables.facts.c.originator_id)
        .where(tables.facts.c.fact_type.in_(list(fact_types)))
        .distinct()
        .scalar_subquery()
    )
    query = sa.select(_E.c.originator_id, _E.c.originator_version, _E.c.topic, _E.c.state).order_by(
        _E.c.originator_id, _E.c.originator_version
    )
    queries: Iterable[Any]
    if among is None:
        queries = [query.where(_E.c.originator_id.in_(having))]
    else:
        queries = (
            query.where(_E.c.originator_id.in_(chunk)) for chunk in batched(sorted(among), 500)
        )
    batch: tuple[UUID, list[StoredEvent]] | None = None
    with database.reading() as conn:
        for each in queries:
            # On the statement, not the connection: see `indexes.customer_refs`.
            for row in conn.execute(each.execution_options(yield_per=5000)):
                if batch is None or row[0] != batch[0]:
                    if batch is not None:
                        yield batch
                    batch = (row[0], [])
                batch[1].append(StoredEvent(row[0], row[1], row[2], row[3]))
    if batch is not None:
        yield batch


def fact_recorded(database: Database, fact_id: str) -> bool:
    import sqlalchemy as sa

    from ledger.persistence import tables

    with database.reading() as conn:
        found = conn.execute(
            sa.select(tables.facts.c.fact_id).where(tables.facts.c.fact_id == fact_id)
        ).first()
    return found is not None
