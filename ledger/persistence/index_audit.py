"""`verify`'s check of the indexes the ledger answers from, against the events they index.

The events are the record, and the Merkle tree proves them unaltered; the index tables beside
them (which stream a customer reference names, which customer an order belongs to) are how
the ledger finds a customer's events. An intruder who rewrites an index row without touching
an event could make `customer trail C1` answer with another customer's disclosures, or have
a later payment judged against the wrong customer, and the tree would still verify. So
`verify` holds the two indexes against the events:

- `ledger_customers`: each row's event is a registration, in the row's stream, of the row's
  reference; and every registration has its row.
- `ledger_orders`: each row's order was placed in the row's stream; and every placing has
  its row.
- `ledger_facts`, the fact ids already recorded (what makes a fact "never recorded twice",
  SPEC §2, and what `prove FACT_ID` finds): each row names the event that recorded its fact,
  and every event that recorded a fact has its row, of that fact's type and stream. A deleted
  row would let the same line be recorded again, sealed like any new fact; a row moved would
  prove another fact; a type changed would turn a transfer initiation into something the
  rules do not count. This index is as large as the log, so it is held against the events by
  a digest: the sum of a keyed hash of each (position, fact id) over the events
  (`Indexed.take`) and over the index's rows (`FactDigest`), and each row's type and stream
  by one join the database runs (`facts_of_another_kind`); only when either disagrees are
  the rows compared one by one (`audit_fact_index`).

The registrations and placings are picked out of the event rows `verify` reads to hash them
anyway (`Indexed.take`, in its hashing processes too). The index rows are read once, before
those processes fork, as lookups they inherit (`IndexLookup`): each process matches its
blocks' events and sends back counts only; if the counts disagree, the one-process pass
names every row that differs (`audit_indexes`). A problem names the reference (customer
and order references are identifiers, never personal data).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from ledger.integrity import Problem
from ledger.persistence.database import fetch_rows

_REGISTERED = b"ledger.domainmodel:Customer.Registered"
_PLACED = b"ledger.domainmodel:Customer.OrderPlaced"
_WANTED = frozenset({_REGISTERED, _PLACED})
_LISTED = 10  # problems named one by one; the rest are counted
# (registrations that match their index row, registrations, placings that match, placings,
# events that recorded a fact, the digest of their (position, fact id))
Counts = tuple[int, int, int, int, int, int]
_MASK = (1 << 64) - 1

# Stream ids are compared as `verify` reads an event's (`seals._EVENT_SQL`): on SQLite its 32
# hex digits as bytes, on PostgreSQL its 16 bytes; the index rows are read in the same form.
_INDEX_SQL = {
    "sqlite": (
        "SELECT notification_id, CAST(customer_id AS BLOB), customer_ref FROM ledger_customers",
        "SELECT order_ref, CAST(customer_id AS BLOB) FROM ledger_orders",
    ),
    "postgresql": (
        "SELECT notification_id, uuid_send(customer_id), customer_ref FROM ledger_customers",
        "SELECT order_ref, uuid_send(customer_id) FROM ledger_orders",
    ),
}


class Indexed:
    """The registrations and placings among event rows, as they are read for hashing."""

    def __init__(self, *, facts: bool = True) -> None:
        self.registrations: list[tuple[int, Any, Any]] = []  # (position, stream id, ref)
        self.placings: list[tuple[Any, Any, int]] = []  # (order ref, stream id, position)
        self.facts = FactDigest()  # of the events that recorded a fact (if `facts`)
        self.with_facts = facts

    def take(
        self, batches: Iterable[Sequence[tuple[Any, ...]]]
    ) -> Iterator[Sequence[tuple[Any, ...]]]:
        """Pass event batches (position, originator, version, topic as bytes, state) through,
        keeping what the indexes are checked against. Kept lean: it runs on every event row
        `verify` reads."""
        wanted, loads, registered = _WANTED, orjson.loads, _REGISTERED
        registrations, placings, facts = self.registrations, self.placings, self.facts
        with_facts = self.with_facts
        for batch in batches:
            if with_facts:
                facts.add_events(batch)
            for position, stream, _version, topic, state in [r for r in batch if r[3] in wanted]:
                registration = topic == registered
                try:
                    reference = loads(state).get("ref" if registration else "order")
                except (orjson.JSONDecodeError, TypeError, AttributeError):
                    reference = None  # not what was recorded: no index row matches it
                if type(reference) is not str:
                    reference = None
                if registration:
                    registrations.append((position, stream, reference))
                else:
                    placings.append((reference, stream, position))
            yield batch


class FactDigest:
    """How many facts, and the sum of a hash of each one's (position, fact id) as one
    string: Python's `hash` of a string is SipHash, keyed by a secret random to each run of
    `verify` (which its forked processes share), so no one can make altered rows sum to the
    same digest in advance. (A hash of the tuple would not do: a tuple's hash is not a keyed
    function of its items together, and two rows' fact ids swapped summed to the same digest
    about half the time.) Each row's type and stream are held against its event's by
    `facts_of_another_kind`."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = 0

    def add(self, rows: Iterable[tuple[Any, Any]]) -> None:
        """Facts as (position, fact id), each hashed as one string."""
        hashes = [hash(f"{p!r}\x1f{f!r}") for p, f in rows]
        self.count += len(hashes)
        self.digest = (self.digest + sum(hashes)) & _MASK

    def add_events(self, batch: Sequence[tuple[Any, ...]]) -> None:
        """The facts recorded by event rows (position, originator, version, topic, state)."""
        fact_ids = list(map(_fact_id, batch))
        self.add([(row[0], f) for row, f in zip(batch, fact_ids, strict=True) if f is not None])

    def read(self, conn: Connection) -> None:
        """The fact index's rows (read on the driver, in batches; on PostgreSQL through a
        server-side cursor, so a large index never lands in memory at once)."""
        raw: Any = conn.connection.dbapi_connection
        is_sqlite = conn.dialect.name == "sqlite"
        cursor = raw.cursor() if is_sqlite else raw.cursor(name="consent_ledger_fact_digest")
        try:
            cursor.execute(_FACT_POSITIONS_SQL)
            while rows := cursor.fetchmany(10_000):
                self.add(rows)
        finally:
            cursor.close()

    def same(self, other: FactDigest) -> bool:
        return (self.count, self.digest) == (other.count, other.digest)


def facts_of_another_kind(conn: Connection) -> int:
    """How many fact index rows give their fact another type or stream than its event's
    (one join, run by the database: the digest holds positions and ids only)."""
    postgres = conn.dialect.name == "postgresql"
    differs = "IS DISTINCT FROM" if postgres else "IS NOT"
    cases = " ".join(
        f"WHEN '{topic.decode()}' THEN '{fact_type}'" for topic, fact_type in _TOPIC_TYPES.items()
    )
    sql = (
        "SELECT count(*) FROM ledger_facts f JOIN ledger_events e "
        "ON e.notification_id = f.notification_id "
        f"WHERE f.originator_id {differs} e.originator_id "
        f"OR f.fact_type {differs} (CASE e.topic {cases} END)"
    )
    return int(fetch_rows(conn, sql, ())[0][0])


def _fact_id(row: tuple[Any, ...]) -> str | None:
    """The fact id an event row's state records (None: an event of no fact, or a state
    that is not what was recorded, which the tree's check names).

    The state is JSON as the ledger wrote it, its top-level `fact_id` before any nested
    object: the first `"fact_id":"` is that key, and its value, if it holds no escape, is
    read there in C, in a third of the time of decoding the state. Any other state (an id
    with an escape in it, a driver's memoryview) is decoded whole. (Were the fast path ever
    wrong, the digests would differ and `audit_fact_index`, which decodes every state whole,
    would find nothing to name: slower, never a false problem.)"""
    state = row[4]
    try:
        at = state.find(b'"fact_id":"') if type(state) is bytes else -1
        found = _FACT_ID.match(state, at) if at >= 0 else None
        if found is not None:
            return found.group(1).decode()
    except UnicodeDecodeError:
        return None
    return _decoded_fact_id(row)


def _decoded_fact_id(row: tuple[Any, ...]) -> str | None:
    """`_fact_id`, from the whole state decoded."""
    try:
        value = orjson.loads(row[4]).get("fact_id")
    except (orjson.JSONDecodeError, TypeError, AttributeError):
        return None
    return value if type(value) is str else None


_FACT_POSITIONS_SQL = "SELECT notification_id, fact_id FROM ledger_facts"
# The fact index's rows, their stream ids in the form `verify` reads an event's (see
# `_INDEX_SQL`).
_FACT_INDEX_SQL = {
    "sqlite": "SELECT notification_id, fact_id, fact_type, CAST(originator_id AS BLOB) "
    "FROM ledger_facts",
    "postgresql": "SELECT notification_id, fact_id, fact_type, uuid_send(originator_id) "
    "FROM ledger_facts",
}
# The fact index's type of each event class that records a fact (a feed fact's type, or
# the type of a command-only record); `tests/unit/test_integrity.py` holds it to the domain
# model's classes.
_TOPIC_TYPES: dict[bytes, str] = {
    b"ledger.domainmodel:" + name.encode(): fact_type
    for name, fact_type in {
        "Customer.Registered": "customer.registered",
        "Customer.DetailsUpdated": "customer.updated",
        "Customer.ConsentGiven": "consent.given",
        "Customer.ConsentWithdrawn": "consent.withdrawn",
        "Customer.OrderPlaced": "order.placed",
        "Customer.ConfirmationSent": "order.confirmation_sent",
        "Customer.VerificationContacted": "order.verification_contact",
        "Customer.PaymentAuthorisationRecorded": "payment.authorisation",
        "Customer.IdentityChecked": "identity.check",
        "Customer.CreditReferenceDisclosed": "cra.disclosure",
        "Customer.OrderDispatched": "order.dispatched",
        "Customer.OrderDelivered": "order.delivered",
        "Customer.OrderCancelled": "order.cancelled",
        "Customer.AffiliateDisclosed": "affiliate.disclosure",
        "Customer.MarketingContacted": "marketing.contact",
        "Customer.ResearchContacted": "research.contact",
        "Customer.TransferDisclosed": "transfer.disclosure",
        "Customer.AccessRequested": "subject.access_requested",
        "Customer.Erased": "subject.erased",
        "Customer.RecipientNotified": "recipient.notified",
        "Acquirer.TransferInitiated": "transfer.initiated",
        "Acquirer.DueDiligenceExported": "export.due_diligence",
    }.items()
}
_FACT_ID = re.compile(rb'"fact_id":"([^"\\]*)"')


class IndexRows:
    """The customer and order indexes' rows (`read`), in the form the events are read in."""

    def __init__(self) -> None:
        self.customers: list[tuple[Any, ...]] = []  # (position, stream id, ref)
        self.orders: list[tuple[Any, ...]] = []  # (order ref, stream id)

    def read(self, conn: Connection) -> None:
        customers, orders = _INDEX_SQL[conn.dialect.name]
        self.customers = fetch_rows(conn, customers, ())
        self.orders = fetch_rows(conn, orders, ())


class IndexLookup:
    """The index rows as lookups, made before `verify`'s hashing processes fork: each holds
    the registrations and placings of its blocks against them (`matches`), so only counts
    travel back; the parent adds them up (`agrees`)."""

    def __init__(self, index: IndexRows, *, facts: bool = True) -> None:
        self.with_facts = facts  # whether the events' fact digest is wanted
        self.rows = (len(index.customers), len(index.orders))
        self.customers = {position: (stream, ref) for position, stream, ref in index.customers}
        self.orders = dict(index.orders)

    def matches(self, found: Indexed) -> Counts:
        """How many of `found`'s registrations and placings match their index rows."""
        customers, orders = self.customers, self.orders
        registrations = sum(
            1 for position, stream, ref in found.registrations
            if customers.get(position) == (stream, ref)
        )  # fmt: skip
        placings = sum(
            1 for order, stream, _position in found.placings if orders.get(order) == stream
        )
        facts = found.facts
        return (
            registrations,
            len(found.registrations),
            placings,
            len(found.placings),
            facts.count,
            facts.digest,
        )

    def agrees(self, counts: Iterable[Counts]) -> bool:
        """Whether every event matched its customer or order index row and every such row
        was matched: each event matches at most one row (a position, an order reference), so
        equal counts mean one row per event and one event per row. (The fact index is held
        against `facts`, the events' digest.)"""
        totals = [sum(column) for column in zip(*counts, strict=True)] or [0] * 6
        customers, orders = self.rows
        return totals[:4] == [customers, customers, orders, orders]

    @staticmethod
    def facts(counts: Iterable[Counts]) -> FactDigest:
        """The digest of the facts the events recorded, from the blocks' counts."""
        total = FactDigest()
        for block in counts:
            total.count += block[4]
            total.digest = (total.digest + block[5]) & _MASK
        return total


def audit_indexes(index: IndexRows, found: Indexed) -> list[Problem]:
    """Every disagreement between the customer and order indexes and the events `found`:
    each index row is looked up among the events' (one dict lookup a row)."""
    problems: list[Problem] = []
    registered = {position: (stream, ref) for position, stream, ref in found.registrations}
    for position, stream, ref in index.customers:
        if registered.pop(position, None) != (stream, ref):
            problems.append(
                Problem(
                    "index_altered",
                    f"the customer index names customer {ref!r} at event {position}, which "
                    "is not that customer's registration: queries of that customer would "
                    "answer from another stream",
                    int(position),
                )
            )
    for position, (_stream, ref) in sorted(registered.items()):
        problems.append(
            Problem(
                "index_altered",
                f"the registration of customer {ref!r} at event {position} has no row in the "
                "customer index: the ledger no longer finds that customer",
                position,
            )
        )
    placed = {order: (stream, position) for order, stream, position in found.placings}
    for order, stream in index.orders:
        placing = placed.pop(order, None)
        if placing is None or placing[0] != stream:
            where = f", placed at event {placing[1]}," if placing is not None else ""
            problems.append(
                Problem(
                    "index_altered",
                    f"the order index puts order {order!r}{where} with a customer whose "
                    "stream did not place it: its facts would be judged against another "
                    "customer",
                    placing[1] if placing is not None else None,
                )
            )
    for order, (_stream, position) in sorted(placed.items(), key=lambda item: item[1][1]):
        problems.append(
            Problem(
                "index_altered",
                f"the placing of order {order!r} at event {position} has no row in the order "
                "index: the ledger no longer finds that order",
                position,
            )
        )
    return _capped(problems)


def audit_fact_index(
    conn: Connection, events: Iterable[Sequence[tuple[Any, ...]]]
) -> list[Problem]:
    """Every disagreement between the fact index and the facts the event rows `events`
    recorded, named one by one (run only when their digests differ: it holds every index
    row in memory). A fact id is the feed's identifier of a line, never personal data."""
    index = {
        str(f): (int(p), t, bytes(s))
        for p, f, t, s in fetch_rows(conn, _FACT_INDEX_SQL[conn.dialect.name], ())
    }
    problems: list[Problem] = []
    for batch in events:
        for row in batch:
            fact_id = _decoded_fact_id(row)
            if fact_id is None:
                continue
            position = int(row[0])
            entry = index.pop(fact_id, None)
            indexed = entry[0] if entry is not None else None
            if entry is None:
                problems.append(
                    Problem(
                        "index_altered",
                        f"fact {fact_id!r}, recorded at event {position}, has no row in the "
                        "fact index: the same fact could be recorded again",
                        position,
                    )
                )
            elif indexed != position:
                problems.append(
                    Problem(
                        "index_altered",
                        f"the fact index puts fact {fact_id!r} at event {indexed}, but it was "
                        f"recorded at event {position}: its proof would be another event's",
                        position,
                    )
                )
            elif entry[1] != _TOPIC_TYPES.get(bytes(row[3])):
                problems.append(
                    Problem(
                        "index_altered",
                        f"the fact index gives fact {fact_id!r}, recorded at event {position}, "
                        f"the type {entry[1]!r}, which is not the type it was recorded as: "
                        "the rules would judge it as another kind of fact",
                        position,
                    )
                )
            elif entry[2] != bytes(row[1]):
                problems.append(
                    Problem(
                        "index_altered",
                        f"the fact index puts fact {fact_id!r}, recorded at event {position}, "
                        "in another stream than its event's: it would be read as another "
                        "customer's",
                        position,
                    )
                )
    for fact_id, (position, _type, _stream) in sorted(index.items(), key=lambda item: item[1]):
        problems.append(
            Problem(
                "index_altered",
                f"the fact index names fact {fact_id!r} at event {position}, which recorded "
                "no such fact",
                position,
            )
        )
    return _capped(problems)


def _capped(problems: list[Problem]) -> list[Problem]:
    """The first `_LISTED` problems named, the rest counted."""
    if len(problems) <= _LISTED:
        return problems
    more = len(problems) - _LISTED
    return [*problems[:_LISTED], Problem("index_altered", f"{more} more disagree")]
