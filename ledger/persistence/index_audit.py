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

The customer and order indexes are held against the events the same way, by digests of
their rows (`IndexDigests`): the registrations and placings are picked out of the event rows
`verify` reads to hash them anyway (`Indexed.take`, in its hashing processes too), each
process sends back counts and digests only, and the index tables are read in batches beside
them. So `verify` holds no list of customers, orders or facts, whatever the size of the
ledger: its memory stays flat. Only when a digest disagrees are the index rows and the
events' registrations and placings read into memory and compared one by one
(`audit_indexes`). A problem names the reference (customer and order references are
identifiers, never personal data).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from ledger.integrity import Problem
from ledger.persistence.database import fetch_rows, stream_rows

_REGISTERED = b"ledger.domainmodel:Customer.Registered"
_PLACED = b"ledger.domainmodel:Customer.OrderPlaced"
_WANTED = frozenset({_REGISTERED, _PLACED})
_LISTED = 10  # problems named one by one; the rest are counted
# A block's (registrations, their digest, placings, their digest, events that recorded a
# fact, the digest of their (position, fact id)): see `Indexed.counts`.
Counts = tuple[int, int, int, int, int, int]
_MASK = (1 << 64) - 1

# Stream ids are compared as `verify` reads an event's (`seals._EVENT_SQL`): on SQLite its 32
# hex digits as bytes, on PostgreSQL its 16 bytes; the index rows are read in the same form.
# On SQLite only an id kept as text: a blob of the same digits (SQLite keeps any type in any
# column) would cast to the same bytes, yet no lookup by the id finds it and the ledger's
# reads of the row fail; it reads as no id, which no event has.
_SQLITE_ID = "CASE typeof(customer_id) WHEN 'text' THEN CAST(customer_id AS BLOB) END"
_INDEX_SQL = {
    "sqlite": (
        f"SELECT notification_id, {_SQLITE_ID}, customer_ref FROM ledger_customers",
        f"SELECT order_ref, {_SQLITE_ID} FROM ledger_orders",
    ),
    "postgresql": (
        "SELECT notification_id, uuid_send(customer_id), customer_ref FROM ledger_customers",
        "SELECT order_ref, uuid_send(customer_id) FROM ledger_orders",
    ),
}


def _row_hash() -> Callable[[str], int]:
    """The hash the digests sum, of a row as one text: Python's `hash`, SipHash keyed by a
    secret random to each run (which forked processes share), so no one can make altered
    rows sum the same in advance. Unless PYTHONHASHSEED fixes that key (some deployments
    set it, for runs that repeat): then a BLAKE2b keyed by 16 random bytes of this run,
    slower, but keyed as the digests' check needs."""
    seed = os.environ.get("PYTHONHASHSEED", "random")
    if sys.flags.ignore_environment or seed == "random":
        return hash
    key, blake2b = os.urandom(16), hashlib.blake2b

    def keyed(text: str) -> int:
        digest = blake2b(text.encode(errors="surrogatepass"), digest_size=8, key=key)
        return int.from_bytes(digest.digest(), "little", signed=True)

    return keyed


row_hash = _row_hash()


class RowDigest:
    """How many rows, and the sum of a hash of each one's values joined as one string
    (`row_hash`: keyed by a secret random to each run of `verify`, which its forked
    processes share), so no one can make altered rows sum to the same digest in advance.
    (A hash of the tuple would not do: a tuple's hash is not a keyed function of its items
    together, and two rows' values swapped summed to the same digest about half the time.)
    Equal counts and digests: the same rows, in any order."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = 0

    def add(self, rows: Iterable[tuple[Any, ...]]) -> None:
        self._take([row_hash("\x1f".join(map(repr, row))) for row in rows])

    def _take(self, hashes: list[int]) -> None:
        self.count += len(hashes)
        self.digest = (self.digest + sum(hashes)) & _MASK

    def add_digest(self, count: int, digest: int) -> None:
        """Another part's rows (a block's, counted in a hashing process)."""
        self.count += count
        self.digest = (self.digest + digest) & _MASK

    def same(self, other: RowDigest) -> bool:
        return (self.count, self.digest) == (other.count, other.digest)

    def read(self, conn: Connection, sql: str) -> None:
        """The rows of `sql`, streamed (`stream_rows`)."""
        for rows in stream_rows(conn, sql):
            self.add(rows)


class FactDigest(RowDigest):
    """The digest of facts as (position, fact id) (`RowDigest`). Each row's type and stream
    are held against its event's by `facts_of_another_kind`."""

    def add(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Facts as (position, fact id), each hashed as one string (as `RowDigest` joins
        them, written out: it runs on every fact)."""
        self._take([row_hash(f"{p!r}\x1f{f!r}") for p, f in rows])

    def add_events(self, batch: Sequence[tuple[Any, ...]]) -> None:
        """The facts recorded by event rows (position, originator, version, topic, state)."""
        fact_ids = list(map(_fact_id, batch))
        self.add([(row[0], f) for row, f in zip(batch, fact_ids, strict=True) if f is not None])

    def read_index(self, conn: Connection) -> None:
        """The fact index's rows."""
        self.read(conn, _FACT_POSITIONS_SQL)


# A customer index row, or a registration, is digested as (position, stream id, ref); an
# order index row, or a placing, as (order ref, stream id). Both sides are read in the same
# form (`_INDEX_SQL`): a value of another type (text where a position was, say) digests
# differently, and the rows compared one by one name it.
def _placing(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[:2]


class Indexed:
    """The registrations and placings among event rows, as they are read for hashing: their
    digests (and, with `keep`, the rows themselves, to name what disagrees), and the digest
    of the facts the events recorded (if `facts`)."""

    def __init__(self, *, facts: bool = True, keep: bool = False) -> None:
        self.registered = RowDigest()
        self.placed = RowDigest()
        self.facts = FactDigest()
        self.with_facts = facts
        self.keep = keep
        self.registrations: list[tuple[int, Any, Any]] = []  # (position, stream id, ref)
        self.placings: list[tuple[Any, Any, int]] = []  # (order ref, stream id, position)

    def take(
        self, batches: Iterable[Sequence[tuple[Any, ...]]]
    ) -> Iterator[Sequence[tuple[Any, ...]]]:
        """Pass event batches (position, originator, version, topic as bytes, state) through,
        keeping what the indexes are checked against. Kept lean: it runs on every event row
        `verify` reads."""
        wanted, loads, registered = _WANTED, orjson.loads, _REGISTERED
        with_facts, keep = self.with_facts, self.keep
        for batch in batches:
            if with_facts:
                self.facts.add_events(batch)
            registrations: list[tuple[int, Any, Any]] = []
            placings: list[tuple[Any, Any, int]] = []
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
            if registrations:
                self.registered.add(registrations)
            if placings:
                self.placed.add(map(_placing, placings))
            if keep:
                self.registrations.extend(registrations)
                self.placings.extend(placings)
            yield batch

    def counts(self) -> Counts:
        """What a hashing process sends back of its block (`add_counts` adds it up)."""
        registered, placed, facts = self.registered, self.placed, self.facts
        return (
            registered.count,
            registered.digest,
            placed.count,
            placed.digest,
            facts.count,
            facts.digest,
        )

    def add_counts(self, counts: Counts) -> None:
        self.registered.add_digest(counts[0], counts[1])
        self.placed.add_digest(counts[2], counts[3])
        self.facts.add_digest(counts[4], counts[5])


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


class IndexDigests:
    """The customer and order indexes' rows as digests (`read`), in the form the events'
    registrations and placings are digested in (`Indexed`)."""

    def __init__(self) -> None:
        self.customers = RowDigest()
        self.orders = RowDigest()

    def read(self, conn: Connection) -> None:
        customers, orders = _INDEX_SQL[conn.dialect.name]
        self.customers.read(conn, customers)
        self.orders.read(conn, orders)

    def agree(self, found: Indexed) -> bool:
        """Whether the events' registrations and placings are the index rows: one row per
        event and one event per row (a position, an order reference)."""
        return self.customers.same(found.registered) and self.orders.same(found.placed)


class IndexRows:
    """The customer and order indexes' rows (`read`), in the form the events are read in:
    read only to name what disagrees (`audit_indexes`)."""

    def __init__(self) -> None:
        self.customers: list[tuple[Any, ...]] = []  # (position, stream id, ref)
        self.orders: list[tuple[Any, ...]] = []  # (order ref, stream id)

    def read(self, conn: Connection) -> None:
        customers, orders = _INDEX_SQL[conn.dialect.name]
        self.customers = fetch_rows(conn, customers, ())
        self.orders = fetch_rows(conn, orders, ())


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
