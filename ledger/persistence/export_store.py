"""The database side of due-diligence exports: secrets, the export's fact id, streamed events.

An export's pseudonym secret is wrapped by the master key (bound to the export's id) in
`ledger_export_secrets`; `rewrap_export_secrets` re-wraps them when the master key rotates.
The export reads every customer's events (`customer_event_rows`), bounded by the tree size
it verified and signed for, so the rows it writes are exactly the ledger its manifest names,
however many facts are recorded meanwhile. Customers come in an order keyed by a secret of
the export (`_ordered_ids`), never in the order of their ids; a large export splits that
order among worker processes (`worker_event_rows`), each on its own connection.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Generator, Iterator
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.types import NullType

from ledger.crypto import SealError, unwrap_key, wrap_key
from ledger.errors import MasterKeyError
from ledger.iterables import batched
from ledger.persistence import tables
from ledger.persistence.database import Database, WriteTransaction
from ledger.persistence.postgres_reads import CONNECT_ARGS
from ledger.persistence.sqlite_reads import EXPORT_FACT_TYPE as EXPORT_FACT_TYPE
from ledger.persistence.sqlite_reads import EXPORTS_ONLY
from ledger.persistence.stored_state import decode_state

_X = tables.export_secrets


def _context(export_id: UUID) -> bytes:
    return b"export-secret:" + export_id.bytes


def wrap_secret(master: bytes, export_id: UUID, secret: bytes) -> bytes:
    return wrap_key(master, secret, _context(export_id))


def store_export(
    tx: WriteTransaction,
    *,
    export_id: UUID,
    acquirer: str,
    wrapped_secret: bytes,
    created_at: datetime,
    manifest_sha256: str,
    identified: bool,
    customers: int,
) -> None:
    tx.connection.execute(
        _X.insert(),
        [
            {
                "export_id": export_id,
                "acquirer": acquirer,
                "wrapped_secret": wrapped_secret,
                "created_at": created_at,
                "manifest_sha256": manifest_sha256,
                "identified": identified,
                "customers": customers,
            }
        ],
    )


def export_secret(database: Database, master: bytes, export_id: UUID) -> bytes | None:
    """The export's pseudonym secret (None if there is no such export)."""
    with database.reading() as conn:
        wrapped = conn.execute(
            sa.select(_X.c.wrapped_secret).where(_X.c.export_id == export_id)
        ).scalar()
    if wrapped is None:
        return None
    try:
        return unwrap_key(master, wrapped, _context(export_id))
    except SealError:
        raise MasterKeyError("the master key does not open this export's secret") from None


def exporting_streams(database: Database) -> list[UUID]:
    """The acquirers' streams that recorded an export, from the fact index (which `verify`
    holds against the events), not from the export secrets (which it does not)."""
    facts = tables.facts
    with database.reading() as conn:
        rows = conn.execute(
            sa.select(facts.c.originator_id).where(sa.text(EXPORTS_ONLY)).distinct()
        ).scalars()
        return [UUID(str(ident)) for ident in rows]


def any_export(database: Database) -> bool:
    """Whether any due-diligence export is recorded (from the fact index's partial index)."""
    facts = tables.facts
    with database.reading() as conn:
        query = sa.select(facts.c.fact_id).where(sa.text(EXPORTS_ONLY)).limit(1)
        return conn.execute(query).first() is not None


def exports_recorded(conn: Connection, upto: int) -> list[tuple[int, Any]]:
    """Every due-diligence export recorded by event `upto`: (position, stored state), oldest
    first (what `ledger.views.exports_of` takes)."""
    facts, events = tables.facts, tables.events
    rows = conn.execute(
        sa.select(facts.c.notification_id, events.c.state)
        .join(events, events.c.notification_id == facts.c.notification_id)
        .where(sa.text(f"ledger_facts.{EXPORTS_ONLY}"), facts.c.notification_id <= upto)
        .order_by(facts.c.notification_id)
    )
    return [(int(position), state) for position, state in rows]


def erased_streams(conn: Connection, after: int, upto: int) -> set[UUID]:
    """The customers erased by a fact recorded after event `after`, by event `upto`."""
    return _streams_with(conn, "subject.erased", after, upto)


def rectified_after_disclosing(
    conn: Connection, identified: list[tuple[int, str, datetime | None]], upto: int
) -> set[UUID]:
    """The customers an identified export (the last event it read, fact id, the time it was
    made as of if any) disclosed (its own `transfer.disclosure`, fact id `<fact id>/<n>`)
    with a rectification it may not have given, by event `upto`: one recorded after the
    last event it read (even before its own disclosures, while it ran), or, if it was made
    as of a time, one dated after that time, recorded whenever (`privacy.notifications`).
    Read by position, not by a range of fact ids (whose order is the database's
    collation's); the dates from the rectifications' own events, for those customers only."""
    if not identified:
        return set()
    reads: dict[str, int] = {}  # each export: the last event it read
    dated: dict[str, datetime] = {}  # each made as of a time: that time
    for read, fact_id, as_of in identified:
        reads[fact_id] = read
        if as_of is not None:
            dated[fact_id] = as_of
    after = 0 if dated else min(reads.values())
    facts, rectifying = tables.facts, tables.facts.alias("rectifying")
    # Each condition on the type as the partial index of 0013 says it, for the index to
    # serve the read (as bound parameters, SQLite would not use it, and read the whole
    # fact index). Only the customers with a rectification can be found: the disclosures
    # of the others are left in the database, not read a row at a time here. The stream
    # ids as the driver gives them (converted for the customers found only).
    only = tables.DISCLOSURES_AND_RECTIFICATIONS_ONLY
    rectified_streams = sa.select(rectifying.c.originator_id).where(
        rectifying.c.notification_id > after,
        rectifying.c.notification_id <= upto,
        sa.text(f"rectifying.{only}"),
        sa.text("rectifying.fact_type = 'customer.updated'"),
    )
    rows = conn.execute(
        sa.select(
            facts.c.fact_id,
            facts.c.fact_type,
            sa.type_coerce(facts.c.originator_id, NullType()),
            facts.c.notification_id,
        )
        .where(
            facts.c.notification_id > after,
            facts.c.notification_id <= upto,
            sa.text(f"ledger_facts.{only}"),
            facts.c.originator_id.in_(rectified_streams),  # (their rectifications too)
        )
        .order_by(facts.c.notification_id)
    )
    disclosed: dict[Any, int] = {}  # by an export: the least any of them read
    disclosed_dated: dict[Any, datetime] = {}  # by one made as of a time: the earliest time
    rectified: dict[Any, list[int]] = {}  # the rectifications' positions
    for fact_id, fact_type, ident, position in rows:
        if fact_type == "transfer.disclosure":
            export = fact_id.rpartition("/")[0]
            if export in reads:
                disclosed[ident] = min(disclosed.get(ident, reads[export]), reads[export])
            if export in dated:
                as_of = dated[export]
                disclosed_dated[ident] = min(disclosed_dated.get(ident, as_of), as_of)
        else:
            rectified.setdefault(ident, []).append(position)
    found = {ident for ident, read in disclosed.items() if max(rectified.get(ident, [0])) > read}
    unsure = {i: disclosed_dated[i] for i in rectified.keys() & disclosed_dated.keys() - found}
    found |= _rectified_after(conn, {p: i for i in unsure for p in rectified[i]}, unsure)
    return {UUID(str(ident)) for ident in found}


def _rectified_after(
    conn: Connection, positions: dict[int, Any], times: dict[Any, datetime]
) -> set[Any]:
    """The streams with a rectification (at one of `positions`, of the stream it names)
    dated after the stream's time of `times`: read from those events' states."""
    events = tables.events
    found: set[Any] = set()
    for chunk in batched(sorted(positions), 500):
        rows = conn.execute(
            sa.select(events.c.notification_id, events.c.state).where(
                events.c.notification_id.in_(chunk)
            )
        )
        for position, state in rows:
            ident = positions[position]
            if decode_state(state)["at"] > times[ident]:
                found.add(ident)
    return found


def _streams_with(conn: Connection, fact_type: str, after: int, upto: int) -> set[UUID]:
    """The streams with a fact of `fact_type` recorded after event `after`, by `upto`."""
    facts = tables.facts
    rows = conn.execute(
        sa.select(facts.c.originator_id).where(
            facts.c.notification_id > after,
            facts.c.notification_id <= upto,
            facts.c.fact_type == fact_type,
        )
    )
    return {UUID(str(row[0])) for row in rows}


def rewrap_export_secrets(conn: Connection, old: bytes, new: bytes) -> int:
    """Re-wrap every export secret under a new master key (for key rotation)."""
    rows = conn.execute(
        sa.select(_X.c.export_id, _X.c.wrapped_secret).where(_X.c.wrapped_secret.is_not(None))
    ).all()
    for export_id, wrapped in rows:
        secret = unwrap_key(old, wrapped, _context(export_id))
        conn.execute(
            _X.update()
            .where(_X.c.export_id == export_id)
            .values(wrapped_secret=wrap_key(new, secret, _context(export_id)))
        )
    return len(rows)


def record_export_fact(
    tx: WriteTransaction, fact_id: str, notification_id: int, originator_id: UUID
) -> None:
    """Index the export's event under its fact id, like a fact: recorded once for all time,
    and provable (`prove FACT_ID`)."""
    tx.insert_many(
        tables.facts.name,
        ("fact_id", "notification_id", "fact_type", "originator_id"),
        [(fact_id, notification_id, EXPORT_FACT_TYPE, originator_id)],
    )


def customer_count(database: Database) -> int:
    with database.reading() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(tables.customers)).scalar()
    return int(count or 0)


def erased_after(database: Database, position: int) -> set[UUID]:
    """Customers erased by a fact recorded after event `position`."""
    facts = tables.facts
    with database.reading() as conn:
        rows = conn.execute(
            sa.select(facts.c.originator_id).where(
                facts.c.fact_type == "subject.erased", facts.c.notification_id > position
            )
        )
        return {row[0] for row in rows}


# A customer's event as the export reads it: (originator_id as stored, originator_version,
# topic, state), the driver's row as it is.
EventRow = tuple[Any, int, str, bytes, int]  # stream id, version, topic, state, position


def customer_event_rows(
    database: Database, upto: int, *, order_secret: bytes, ranks: tuple[int, int] | None = None
) -> Generator[tuple[UUID, list[EventRow]], None, None]:
    """Each customer registered by event `upto`, with its rows (events 1..`upto`), over the
    database's own connection, in the order `order_secret` keys (`_ordered_ids`); `ranks`:
    only the customers from rank `start` (0-based) before `stop` in that order."""
    with database.reading() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        yield from _scan(raw, database.is_sqlite, upto, order_secret, ranks)


def worker_event_rows(
    database: Database, upto: int, *, order_secret: bytes, ranks: tuple[int, int]
) -> Iterator[tuple[UUID, list[EventRow]]]:
    """`customer_event_rows` for a forked worker process: on a connection of its own (a
    connection never crosses a fork), read-only on SQLite. Events never change, so every
    worker's snapshot agrees on events 1..`upto` and on the customers registered by then."""
    raw: Any
    if database.is_sqlite:
        path = database.sqlite_path
        assert path is not None
        raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=120)
    else:
        import psycopg

        url = database.url.set(drivername="postgresql")
        raw = psycopg.connect(url.render_as_string(hide_password=False), **CONNECT_ARGS)
    try:
        yield from _scan(raw, database.is_sqlite, upto, order_secret, ranks)
    finally:
        raw.close()


def fact_positions(database: Database, fact_ids: list[str]) -> dict[str, int]:
    """The position in the log of each of `fact_ids` recorded (from the fact index)."""
    facts = tables.facts
    with database.reading() as conn:
        rows = conn.execute(
            sa.select(facts.c.fact_id, facts.c.notification_id).where(facts.c.fact_id.in_(fact_ids))
        )
        return {row[0]: int(row[1]) for row in rows}


def registrations(
    database: Database, upto: int, *, with_times: bool
) -> list[tuple[int, str | None]]:
    """Each customer registered by event `upto`: the position of its registration (its
    first event) and, `with_times`, the registration's stored `at` (ISO 8601 text)."""
    customers, events = tables.customers, tables.events
    with database.reading() as conn:
        if not with_times:
            rows = conn.execute(
                sa.select(customers.c.notification_id).where(customers.c.notification_id <= upto)
            )
            return [(int(row[0]), None) for row in rows]
        rows = conn.execute(
            sa.select(customers.c.notification_id, events.c.state)
            .join(events, events.c.notification_id == customers.c.notification_id)
            .where(customers.c.notification_id <= upto)
        )
        return [(int(row[0]), orjson.loads(row[1]).get("at")) for row in rows]


def registered_count(database: Database, upto: int) -> int:
    """How many customers were registered by event `upto` (what an export of it holds)."""
    customers = tables.customers
    with database.reading() as conn:
        count = conn.execute(
            sa.select(sa.func.count())
            .select_from(customers)
            .where(customers.c.notification_id <= upto)
        ).scalar()
    return int(count or 0)


# The customers in a keyed order: the SHA-256 of a secret and each id. An export's rows must not
# follow the customer ids, which are name-based UUIDs of the references (`customer_id`):
# anyone who could guess the references could sort their ids and read each row's customer
# off its place, and two exports would list their customers in the same order. Keyed by a
# secret of the export's own, the order tells nothing, and differs between exports.
_ORDER_FUNCTION = "consent_ledger_export_order"
_ORDERED_IDS_SQLITE = (
    "SELECT customer_id FROM ledger_customers WHERE notification_id <= ? "
    f"ORDER BY {_ORDER_FUNCTION}(customer_id), customer_id LIMIT ? OFFSET ?"
)
_ORDERED_IDS_POSTGRES = (
    "SELECT customer_id FROM ledger_customers WHERE notification_id <= %s "
    "ORDER BY sha256(convert_to(%s || customer_id::text, 'UTF8')), customer_id "
    "LIMIT %s OFFSET %s"
)
_EVENTS_OF = (
    "SELECT originator_id, originator_version, topic, state, notification_id FROM ledger_events "
    "WHERE notification_id <= {mark} AND originator_id {in_ids} "
    "ORDER BY originator_id, originator_version"
)
_IDS_AT_ONCE = 500


def _ordered_ids(
    raw: Any, is_sqlite: bool, upto: int, order_secret: bytes, ranks: tuple[int, int] | None
) -> Iterator[list[Any]]:
    """The customers' ids as the driver gives them, in the keyed order, a batch at a time
    (sorted by the database: no list of every customer is held here)."""
    key = hashlib.sha256(b"export row order\0" + order_secret).hexdigest()
    start, stop = ranks if ranks is not None else (0, -1)
    limit = stop - start if stop >= 0 else -1
    if is_sqlite:

        def keyed(value: Any) -> str:
            return hashlib.sha256((key + str(value)).encode()).hexdigest()

        raw.create_function(_ORDER_FUNCTION, 1, keyed, deterministic=True)
        cursor = raw.cursor()
        cursor.execute(_ORDERED_IDS_SQLITE, (upto, limit, start))
    else:
        cursor = raw.cursor(name="consent_ledger_export_order")
        cursor.execute(_ORDERED_IDS_POSTGRES, (upto, key, None if limit < 0 else limit, start))
    try:
        while batch := cursor.fetchmany(_IDS_AT_ONCE):
            yield [row[0] for row in batch]
    finally:
        cursor.close()


def _scan(
    raw: Any,
    is_sqlite: bool,
    upto: int,
    order_secret: bytes,
    ranks: tuple[int, int] | None,
) -> Iterator[tuple[UUID, list[EventRow]]]:
    mark = "?" if is_sqlite else "%s"
    if not is_sqlite:
        # Each batch is a few thousand rows off the stream index. Misjudging `= ANY` as a
        # large part of the table, the planner gave each batch parallel workers and JIT
        # compilation (30-70 ms a batch: 1M facts took 10-32 s instead of 6 s). (This
        # transaction's own settings.)
        raw.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        raw.execute("SET LOCAL jit = off")
    events = raw.cursor()
    try:
        for ids in _ordered_ids(raw, is_sqlite, upto, order_secret, ranks):
            in_ids = f"IN ({', '.join(mark * 1 for _ in ids)})" if is_sqlite else "= ANY(%s)"
            params: list[Any] = [upto, *ids] if is_sqlite else [upto, ids]
            events.execute(_EVENTS_OF.format(mark=mark, in_ids=in_ids), params)
            streams: dict[Any, list[EventRow]] = {}
            for row in events.fetchall():
                streams.setdefault(row[0], []).append(row)
            for stored in ids:
                rows = streams.get(stored)
                if rows:
                    yield (UUID(hex=stored) if isinstance(stored, str) else stored), rows
    finally:
        events.close()
